"""budgetctl: the best answer a deadline and a budget allow, from any model call.

``await budgetctl.solve(sampler, deadline=0.1, budget=Budget(tokens=8000), policy=...)`` draws
samples until a stop policy predicts more are not worth their cost, the budget is spent, or the
deadline comes, and returns the current best answer, never an exception.
"""

from . import extract as extract  # answer extractors: text -> answer
from . import samplers as samplers  # OpenAI-compatible samplers (openai imported when one is made)
from ._aggregate import Aggregator as Aggregator
from ._aggregate import BestOfN as BestOfN
from ._aggregate import FirstAccepted as FirstAccepted
from ._aggregate import MajorityVote as MajorityVote
from ._aggregate import Tally as Tally
from ._aggregate import WeightedVote as WeightedVote
from ._aggregate import normalize_answer as normalize_answer
from ._budget import Budget as Budget
from ._gain import GainModel as GainModel
from ._gain import VoteGain as VoteGain
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
from ._trace import TraceWriter as TraceWriter
from ._trace import read_events as read_events
from ._trace import read_runs as read_runs
from ._version import __version__ as __version__
from .sched._scheduler import Scheduler as Scheduler

__all__ = (
    "Aggregator",
    "Auto",
    "BestOfN",
    "Budget",
    "Exhausted",
    "FirstAccepted",
    "GainModel",
    "MajorityVote",
    "Result",
    "Run",
    "RunState",
    "Sample",
    "Sampler",
    "Scheduler",
    "StopReason",
    "Tally",
    "TraceFormatError",
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
