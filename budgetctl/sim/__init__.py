"""Offline simulation: replay sample pools through stop policies to see what they cost and get right."""

from ._replay import LatencyModel as LatencyModel
from ._replay import ReplaySampler as ReplaySampler
from ._replay import Stop as Stop
from ._replay import replay as replay
from ._replay import replay_orders as replay_orders
from ._simulate import DEFAULT_DEADLINES as DEFAULT_DEADLINES
from ._simulate import DatasetResult as DatasetResult
from ._simulate import PolicyResult as PolicyResult
from ._simulate import SimulationResult as SimulationResult
from ._simulate import orders_for as orders_for
from ._simulate import simulate as simulate

__all__ = (
    "DEFAULT_DEADLINES",
    "DatasetResult",
    "LatencyModel",
    "PolicyResult",
    "ReplaySampler",
    "SimulationResult",
    "Stop",
    "orders_for",
    "replay",
    "replay_orders",
    "simulate",
)
