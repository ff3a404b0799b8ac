"""Many requests, one compute budget: the scheduler, its gain models, and what a shared budget buys.

:class:`~budgetctl.Scheduler` (also ``budgetctl.Scheduler``) serves concurrent requests from shared
sample slots, giving each free slot to the request whose next sample is predicted to buy the most
accuracy per token; :func:`simulate_shared_budget` replays a pool through the same allocator.
"""

from ._lookahead import LookaheadGain as LookaheadGain
from ._scheduler import Scheduler as Scheduler
from ._scheduler import SchedulerStats as SchedulerStats
from ._simulate import DEFAULT_GAINS as DEFAULT_GAINS
from ._simulate import SharedBudgetResult as SharedBudgetResult
from ._simulate import SharedDatasetResult as SharedDatasetResult
from ._simulate import SharedRow as SharedRow
from ._simulate import simulate_shared_budget as simulate_shared_budget

__all__ = (
    "DEFAULT_GAINS",
    "LookaheadGain",
    "Scheduler",
    "SchedulerStats",
    "SharedBudgetResult",
    "SharedDatasetResult",
    "SharedRow",
    "simulate_shared_budget",
)
