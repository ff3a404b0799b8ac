"""budgetctl: the best answer a deadline and a budget allow, from any model call.

``await budgetctl.solve(sampler, deadline=0.1, budget=Budget(tokens=8000), policy=...)`` draws
samples until a stop policy predicts more are not worth their cost, the budget is spent, or the
deadline comes, and returns the current best answer, never an exception.

``import budgetctl`` loads only the runtime (anyio, numpy and the standard library): the
scheduler, the samplers, the simulator and the learned policies load on first use (PEP 562).
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from ._aggregate import Aggregator as Aggregator
from ._aggregate import BestOfN as BestOfN
from ._aggregate import FirstAccepted as FirstAccepted
from ._aggregate import MajorityVote as MajorityVote
from ._aggregate import Tally as Tally
from ._aggregate import WeightedVote as WeightedVote
from ._aggregate import normalize_answer as normalize_answer
from ._budget import Budget as Budget
from ._errors import FatalSamplerError as FatalSamplerError
from ._gain import GainModel as GainModel
from ._gain import VoteGain as VoteGain
from ._jsonl import ReadLimits as ReadLimits
from ._plan import Auto as Auto
from ._runtime import Run as Run
from ._runtime import Sampler as Sampler
from ._runtime import open_run as open_run
from ._runtime import solve as solve
from ._runtime import solve_sync as solve_sync
from ._sample import Exhausted as Exhausted
from ._sample import Sample as Sample
from ._state import Result as Result
from ._state import RunState as RunState
from ._state import StopReason as StopReason
from ._trace import TracedRun as TracedRun
from ._trace import TraceFormatError as TraceFormatError
from ._trace import TraceWarning as TraceWarning
from ._trace import TraceWriter as TraceWriter
from ._trace import read_events as read_events
from ._trace import read_runs as read_runs
from ._version import __version__ as __version__
from .policies._base import PolicyError as PolicyError

if _typing.TYPE_CHECKING:  # loaded on first use, see __getattr__
    from . import extract as extract
    from . import samplers as samplers
    from . import sched as sched
    from . import sim as sim
    from .sched._scheduler import Scheduler as Scheduler

__all__ = (
    "Aggregator",
    "Auto",
    "BestOfN",
    "Budget",
    "Exhausted",
    "FatalSamplerError",
    "FirstAccepted",
    "GainModel",
    "MajorityVote",
    "PolicyError",
    "ReadLimits",
    "Result",
    "Run",
    "RunState",
    "Sample",
    "Sampler",
    "Scheduler",
    "StopReason",
    "Tally",
    "TraceFormatError",
    "TraceWarning",
    "TraceWriter",
    "TracedRun",
    "VoteGain",
    "WeightedVote",
    "__version__",
    "normalize_answer",
    "open_run",
    "read_events",
    "read_runs",
    "solve",
    "solve_sync",
)

#: Names loaded on first use: public name -> (module, attribute), ``None`` for the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Scheduler": ("budgetctl.sched._scheduler", "Scheduler"),  # pulls in the allocator and its simulator
    "extract": ("budgetctl.extract", None),
    "samplers": ("budgetctl.samplers", None),  # the openai package is imported when a sampler is made
    "sched": ("budgetctl.sched", None),
    "sim": ("budgetctl.sim", None),
}


def __getattr__(name: str) -> _typing.Any:
    # PEP 562: import what ``name`` needs the first time it is read, then keep it as a global.
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'budgetctl' has no attribute {name!r}") from None
    module = _importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
