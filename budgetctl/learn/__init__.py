"""Learned stop policies: predict what more samples would buy from logged pools, and stop when it is not worth it.

``LearnedStop().fit(pools)`` learns, from many random draw orders of each question's samples, the
expected change in the correctness of the anytime answer if ``h`` more samples are drawn, and
stops a run when no reachable ``h`` buys more accuracy than its tokens are worth (``value``, in
accuracy per 1,000 tokens). It is a stop policy (``learned | MaxSamples(40)``) and a
:class:`~budgetctl.GainModel` for the scheduler. Trained policies are directories of JSON and
``.npz`` arrays (:func:`load_policy`); one is shipped (:func:`default_policy_path`) and is what the
policy spec ``learned`` loads when no path is given.

Needs scikit-learn (``pip install 'budgetctl[learn]'``); the MLP model needs torch
(``budgetctl[torch]``) to train, but not to decide.
"""

from __future__ import annotations

from pathlib import Path

from .._optional import import_optional

import_optional("sklearn.base", "learn", "budgetctl.learn (learned stop policies)")

from ..policies._base import StopPolicy  # noqa: E402
from ..policies._spec import register_policy  # noqa: E402
from ._artifact import SCHEMA_VERSION as SCHEMA_VERSION  # noqa: E402
from ._artifact import ArtifactError as ArtifactError  # noqa: E402
from ._artifact import load_policy as load_policy  # noqa: E402
from ._artifact import load_task_policy as load_task_policy  # noqa: E402
from ._artifact import read_metadata as read_metadata  # noqa: E402
from ._artifact import trained_on as trained_on  # noqa: E402
from ._dataset import Rows as Rows  # noqa: E402
from ._dataset import build_rows as build_rows  # noqa: E402
from ._estimator import GainRegressor as GainRegressor  # noqa: E402
from ._estimator import GainStop as GainStop  # noqa: E402
from ._features import FEATURE_DOCS as FEATURE_DOCS  # noqa: E402
from ._features import FEATURE_NAMES as FEATURE_NAMES  # noqa: E402
from ._features import FEATURE_SCHEMA as FEATURE_SCHEMA  # noqa: E402
from ._features import state_features as state_features  # noqa: E402
from ._gaintable import GainTable as GainTable  # noqa: E402
from ._policy import LearnedStop as LearnedStop  # noqa: E402
from ._policy import NotFittedError as NotFittedError  # noqa: E402
from ._taskpolicy import RiskStop as RiskStop  # noqa: E402

__all__ = (
    "ArtifactError",
    "FEATURE_DOCS",
    "FEATURE_NAMES",
    "FEATURE_SCHEMA",
    "GainRegressor",
    "GainStop",
    "GainTable",
    "LearnedStop",
    "NotFittedError",
    "RiskStop",
    "Rows",
    "SCHEMA_VERSION",
    "build_rows",
    "default_policy_path",
    "load_policy",
    "load_task_policy",
    "read_metadata",
    "state_features",
    "trained_on",
)

#: The shipped default, inside the package (installed copies have it) ...
_PACKAGED = Path(__file__).resolve().parent.parent / "data" / "policies" / "default"
#: ... and its canonical copy at the top of the repository (``policies/default``).
_REPOSITORY = Path(__file__).resolve().parents[2] / "policies" / "default"


def default_policy_path() -> Path:
    """Where the shipped default policy is: inside the installed package, else the repository's ``policies/``.

    ``simulations/train_default.py`` writes both copies, identical (a test checks it).
    """
    for candidate in (_PACKAGED, _REPOSITORY):
        if (candidate / "policy.json").exists():
            return candidate
    raise FileNotFoundError(
        f"the default learned policy is missing (looked in {_PACKAGED} and {_REPOSITORY}); "
        "train one with `python simulations/train_default.py` or pass learned:path=..."
    )


def _from_spec(
    path: str | None = None,
    value: float | str | None = None,
    default_tokens: float | None = None,
    task: str | None = None,
) -> StopPolicy:
    """``learned[:path=DIR][,task=NAME][,value=V][,default_tokens=T]``: a trained policy, else the shipped default.

    ``task`` picks one task of a per-task policy written by ``budgetctl train``; ``value`` and
    ``default_tokens`` apply to gain-model policies (``LearnedStop``). A loaded policy is never
    changed in place: these give a copy.
    """
    loaded = load_task_policy(path if path is not None else default_policy_path(), task)
    if not isinstance(loaded, LearnedStop):
        if value is not None or default_tokens is not None:
            raise ValueError(
                "learned: value and default_tokens apply to gain-model policies; this one has a fixed operating "
                "point (retrain it with `budgetctl train --max-loss`)"
            )
        return loaded  # type: ignore[no-any-return]
    policy = loaded
    if value is not None:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0):
            raise ValueError(f"learned: value must be 'auto' or a number >= 0, got {value!r}")
        policy = policy.set_params(value=value)
    if default_tokens is not None:
        if isinstance(default_tokens, bool) or not isinstance(default_tokens, int | float) or not default_tokens > 0:
            raise ValueError(f"learned: default_tokens must be a number > 0, got {default_tokens!r}")
        policy = policy.set_params(default_tokens=float(default_tokens))
    return policy


_from_spec.spec_parameters = ("path", "value", "default_tokens", "task")  # type: ignore[attr-defined]
register_policy("learned", _from_spec, path_loader=load_task_policy)
