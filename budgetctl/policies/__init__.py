"""Stop policies: pure functions of a run's snapshot that say when more samples are not worth it.

Compose them: ``AdaptiveConsistency(0.95) | MaxSamples(40)`` stops when either does, ``a & b`` when
both do, ``~a`` when ``a`` would not. Any ``state -> bool`` callable is a policy too.
"""

from ._base import AllOf as AllOf
from ._base import AnyOf as AnyOf
from ._base import Never as Never
from ._base import Not as Not
from ._base import PolicyError as PolicyError
from ._base import PolicyLike as PolicyLike
from ._base import StopPolicy as StopPolicy
from ._base import as_policy as as_policy
from ._base import stop_when as stop_when
from ._rules import ESC as ESC
from ._rules import AdaptiveConsistency as AdaptiveConsistency
from ._rules import ConfidenceStop as ConfidenceStop
from ._rules import MaxSamples as MaxSamples
from ._rules import MaxTokens as MaxTokens
from ._rules import Stable as Stable
from ._rules import Unbeatable as Unbeatable
from ._spec import PolicySpecError as PolicySpecError
from ._spec import parse_policy as parse_policy
from ._spec import policy_names as policy_names
from ._spec import register_policy as register_policy

__all__ = (
    "AdaptiveConsistency",
    "AllOf",
    "AnyOf",
    "ConfidenceStop",
    "ESC",
    "MaxSamples",
    "MaxTokens",
    "Never",
    "PolicyError",
    "Not",
    "PolicyLike",
    "PolicySpecError",
    "Stable",
    "StopPolicy",
    "Unbeatable",
    "as_policy",
    "parse_policy",
    "policy_names",
    "register_policy",
    "stop_when",
)
