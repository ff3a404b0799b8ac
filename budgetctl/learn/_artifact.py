"""Trained-policy artifacts: a directory of JSON and ``.npz`` arrays that loads without running any code.

Layout of a policy directory::

    policy.json     what it is: schema versions, the estimator's parameters, the chosen value, the
                    horizons, the feature names, the training data (files, sizes, sha256), the
                    command that made it, held-out metrics, and the sha256 of weights.npz
    weights.npz     the model and calibration arrays (numpy, loaded with allow_pickle=False)
    MODEL_CARD.md   the same facts for people

A file of another ``format``, a newer or unknown ``schema_version``, another feature schema, or
weights whose hash does not match are errors that say so; nothing is guessed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import umask
from .._version import __version__
from ._features import FEATURE_DOCS, FEATURE_NAMES, FEATURE_SCHEMA
from ._models import Calibration, model_from_arrays

if TYPE_CHECKING:
    from ._policy import LearnedStop

__all__ = [
    "save_policy",
    "load_policy",
    "describe_files",
    "ArtifactError",
    "SCHEMA_VERSION",
    "FORMAT",
    "TASK_FORMAT",
    "save_task_policy",
    "load_task_policy",
    "read_document",
    "trained_on",
    "in_sample_warning",
]

#: Version of the artifact layout written here. Readers refuse other versions.
SCHEMA_VERSION = 1
#: The ``format`` field of every policy.json.
FORMAT = "budgetctl.learned-stop"
POLICY_FILE = "policy.json"
WEIGHTS_FILE = "weights.npz"
CARD_FILE = "MODEL_CARD.md"


class ArtifactError(ValueError):
    """A policy artifact that cannot be loaded: missing, corrupt, or of another version."""


def _sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Name, size and sha256 of each training file (what a model card cites as its data)."""
    return [{"path": os.fspath(p), "bytes": os.path.getsize(p), "sha256": _sha256(p)} for p in paths]


def save_policy(
    policy: LearnedStop,
    path: str | os.PathLike[str],
    *,
    command: str | None = None,
    metrics: dict[str, Any] | None = None,
    force: bool = False,
) -> str:
    """Write ``policy`` (fitted) to the directory ``path`` atomically (see :func:`save_directory`); returns the path."""
    model = policy._fitted()
    arrays = {f"model.{k}": v for k, v in model.arrays().items()}
    arrays.update({f"calibration.{k}": v for k, v in policy.calibration_.arrays().items()})
    bad = [name for name, array in arrays.items() if not _finite(name, array)]
    if bad:
        raise ArtifactError(
            f"refusing to save a policy with non-finite weights ({', '.join(bad)}): too little training data "
            "for the model (more questions, --orders or --target-orders)"
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    weights = buffer.getvalue()
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in policy.get_params().items()}
    document = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "feature_schema": FEATURE_SCHEMA,
        "budgetctl_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model.kind,
        "params": params,
        "value": policy.value_,
        "horizons": list(policy.horizons_),
        "default_tokens": policy.default_tokens_,
        "feature_names": list(policy.feature_names_),
        "training": policy.training_,
        "command": command,
        "metrics": metrics or {},
    }
    return save_directory(path, document, weights, model_card, load_policy, force=force)


#: The largest weight magnitude a policy may hold. Trained weights are many orders of magnitude
#: smaller; a larger one (a damaged file) would overflow a decision to inf instead of failing at load.
MAX_WEIGHT = 1e50


def _finite(name: str, array: np.ndarray) -> bool:
    """Whether a weight array is usable: finite floats of sane size (tree thresholds may be +inf: padding)."""
    if array.dtype.kind not in "fc":
        return True
    if name.endswith("threshold"):
        if np.isnan(array).any() or np.isneginf(array).any():
            return False
        array = array[np.isfinite(array)]
    elif not np.isfinite(array).all():
        return False
    return not array.size or bool(np.abs(array).max() <= MAX_WEIGHT)


def save_directory(
    path: str | os.PathLike[str],
    document: dict[str, Any],
    weights: bytes,
    card: Callable[[dict[str, Any]], str],
    validate: Callable[[Path], object],
    *,
    force: bool = False,
) -> str:
    """Write a policy directory atomically: a reader always finds the old policy or the new one, never neither.

    A new directory is written in full under a temporary name beside ``path``, validated by loading
    it (``validate``), then renamed into place. Over an existing policy (``force=True`` only) the
    weights go in under a new name derived from their hash, and ``policy.json``, which names its
    weights, is replaced in one rename: before it the old policy is complete, after it the new one.
    """
    directory = Path(path)
    if directory.exists() and not force:
        raise FileExistsError(f"{os.fspath(directory)} already exists (pass --force / force=True to replace it)")
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{os.fspath(directory)} exists and is not a directory")
    digest = hashlib.sha256(weights).hexdigest()
    # Over an existing policy the new weights need a name of their own until policy.json switches to them.
    weights_name = f"weights-{digest[:16]}.npz" if directory.exists() else WEIGHTS_FILE
    document = {**document, "weights": {"file": weights_name, "sha256": digest}}
    text = json.dumps(document, indent=2, sort_keys=False, default=_json_default) + "\n"
    parent = directory.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp's 0700 is for the staging only, not the policy
        (staging / weights_name).write_bytes(weights)
        (staging / POLICY_FILE).write_text(text, encoding="utf-8")
        (staging / CARD_FILE).write_text(card(document), encoding="utf-8")
        for name in (weights_name, POLICY_FILE, CARD_FILE):
            _fsync(staging / name)
        validate(staging)
        if not directory.exists():
            os.rename(staging, directory)
            return os.fspath(directory)
        old = _referenced_weights(directory)
        os.replace(staging / weights_name, directory / weights_name)
        os.replace(staging / CARD_FILE, directory / CARD_FILE)
        os.replace(staging / POLICY_FILE, directory / POLICY_FILE)  # the commit point
        if old and old != weights_name and Path(old).name == old and old.startswith("weights"):
            (directory / old).unlink(missing_ok=True)
        return os.fspath(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _referenced_weights(directory: Path) -> str | None:
    try:
        document = json.loads((directory / POLICY_FILE).read_text(encoding="utf-8"))
        name = document["weights"]["file"]
        return name if isinstance(name, str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _json_default(value: object) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to policy.json")


def _policy_file(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.is_dir():
        target = target / POLICY_FILE
    if not target.exists():
        raise ArtifactError(f"no trained policy at {os.fspath(path)!r} (expected a directory with {POLICY_FILE})")
    return target


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``policy.json`` of the policy at ``path`` (a directory or its policy.json)."""
    target = _policy_file(path)
    try:
        document = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{target}: not a readable policy file ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ArtifactError(f"{target}: not a budgetctl learned-policy file (format is not {FORMAT!r})")
    schema = document.get("schema_version")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise ArtifactError(f"{target}: unknown schema_version {schema!r} (this budgetctl reads {SCHEMA_VERSION})")
    if schema > SCHEMA_VERSION:
        raise ArtifactError(
            f"{target}: schema_version {schema} was written by a newer budgetctl "
            f"({document.get('budgetctl_version', '?')}); this one ({__version__}) reads {SCHEMA_VERSION}: "
            "upgrade budgetctl"
        )
    if schema != SCHEMA_VERSION:
        raise ArtifactError(f"{target}: unknown schema_version {schema} (this budgetctl reads {SCHEMA_VERSION})")
    features = document.get("feature_schema")
    if features != FEATURE_SCHEMA or document.get("feature_names") != list(FEATURE_NAMES):
        raise ArtifactError(
            f"{target}: trained on feature schema {features!r}, this budgetctl computes schema {FEATURE_SCHEMA}: "
            "retrain it with `budgetctl train`"
        )
    return document


#: Largest weights file read (bytes on disk), and largest total size of its arrays once decompressed.
MAX_WEIGHTS_BYTES = 64 << 20
MAX_UNCOMPRESSED_BYTES = 256 << 20


def weights_path(target: Path, document: dict[str, Any]) -> Path:
    """The weights file a policy.json names: a plain file name inside the artifact's directory, never a link."""
    entry = document.get("weights")
    name = entry.get("file") if isinstance(entry, dict) else None
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or Path(name).is_absolute()
        or Path(name).name != name
    ):
        raise ArtifactError(f"{target}: weights.file must be a file name inside the policy directory, got {name!r}")
    path = target.parent / name
    if path.is_symlink():
        raise ArtifactError(f"{target}: weights file {name!r} is a symbolic link; artifacts hold their own weights")
    if not path.is_file():
        raise ArtifactError(f"{target}: weights file {name!r} is missing or not a regular file")
    return path


def read_weights(target: Path, document: dict[str, Any], *, allowed: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of a policy's weights, checked before anything is decompressed.

    The file must be a regular file inside the directory, at most :data:`MAX_WEIGHTS_BYTES`, match
    the sha256 in policy.json, and hold only ``.npy`` members whose names start with ``allowed`` and
    whose declared sizes sum to at most :data:`MAX_UNCOMPRESSED_BYTES`. Never unpickles.
    """
    path = weights_path(target, document)
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ArtifactError(f"{path}: {size} bytes, more than the {MAX_WEIGHTS_BYTES} a policy's weights may have")
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{target}: cannot read its weights {path}: {error}") from None
    entry = document.get("weights")
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if expected != hashlib.sha256(blob).hexdigest():
        raise ArtifactError(f"{path}: sha256 does not match {target.name} (corrupt or replaced)")
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ArtifactError(f"{path}: not an npz archive ({error})") from None
    total = 0
    for member in members:
        stem = member.filename[: -len(".npy")] if member.filename.endswith(".npy") else None
        if stem is None or not stem.startswith(allowed):
            raise ArtifactError(f"{path}: unexpected member {member.filename!r} (expected {', '.join(allowed)}*.npy)")
        total += member.file_size
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ArtifactError(f"{path}: arrays of {total} bytes decompressed, more than {MAX_UNCOMPRESSED_BYTES}")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ArtifactError(f"{path}: unreadable arrays ({error})") from None


def load_policy(path: str | os.PathLike[str]) -> LearnedStop:
    """Load a trained policy from a directory written by :meth:`LearnedStop.save` or ``budgetctl train``."""
    from ._policy import LearnedStop

    document = read_metadata(path)
    target = _policy_file(path)
    arrays = read_weights(target, document, allowed=("model.", "calibration."))
    try:
        model_arrays = {k.partition(".")[2]: v for k, v in arrays.items() if k.startswith("model.")}
        calibration_arrays = {k.partition(".")[2]: v for k, v in arrays.items() if k.startswith("calibration.")}
        model = model_from_arrays(str(document.get("model")), model_arrays)
        calibration = Calibration.from_arrays(calibration_arrays)
        params = dict(document.get("params", {}))
        if "horizons" in params:
            params["horizons"] = tuple(params["horizons"])
        policy = LearnedStop(**params)
        horizons = tuple(int(h) for h in document["horizons"])
        value = float(document["value"])
        default_tokens = float(document["default_tokens"])
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{target}: malformed policy ({error})") from None
    if not horizons or any(h < 1 for h in horizons) or list(horizons) != sorted(set(horizons)):
        raise ArtifactError(f"{target}: horizons must be increasing ints >= 1, got {list(horizons)}")
    if not (math.isfinite(value) and value >= 0 and math.isfinite(default_tokens) and default_tokens > 0):
        raise ArtifactError(f"{target}: value {value!r} or default_tokens {default_tokens!r} out of range")
    bad = [name for name, array in arrays.items() if not _finite(name, array)]
    if bad:
        raise ArtifactError(f"{target}: non-finite weights, or weights above {MAX_WEIGHT:g}, in {', '.join(bad)}")
    feature = model_arrays.get("feature")
    if feature is not None and feature.size and (feature.min() < 0 or feature.max() >= len(FEATURE_NAMES)):
        raise ArtifactError(
            f"{target}: a tree splits on feature index {int(feature.min())}..{int(feature.max())}, "
            f"outside 0..{len(FEATURE_NAMES) - 1}"
        )
    if model.n_outputs != 2 * len(horizons) or len(calibration.knots) != len(horizons):
        raise ArtifactError(
            f"{target}: the model has {model.n_outputs} outputs (2 per horizon) and the calibration maps "
            f"{len(calibration.knots)} horizons, but {len(horizons)} are listed"
        )
    policy.model_ = model
    policy.calibration_ = calibration
    policy.horizons_ = horizons
    policy.value_ = value
    policy.default_tokens_ = default_tokens
    policy.feature_names_ = FEATURE_NAMES
    policy.training_ = dict(document.get("training", {}))
    policy.metadata_ = document
    return policy


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return ["(none recorded)"]
    lines = []
    if "held_out_questions" in metrics:
        lines += [f"On {metrics['held_out_questions']} questions kept out of training.", ""]
    decisions = metrics.get("decisions")
    if decisions:
        lines += [
            f"Decisions, replayed in {decisions.get('orders')} random orders per question (cost: tokens, or "
            "samples where the pool has no token counts):",
            "",
            "| dataset | full pool | learned | samples | tokens | AC 0.95 | samples | ESC 5 | samples | "
            "less cost than the cheaper default |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in decisions.get("datasets", []):
            policies = list(entry["policies"].values())
            own, ac, esc = policies[0], policies[1], policies[2]
            tokens = "-" if own["mean_tokens"] is None else f"{own['mean_tokens']:.1f}"
            saving = entry.get("savings_vs_cheaper_default")
            lines.append(
                f"| {entry['dataset']} | {entry['full_pool_accuracy']:.4f} | {own['accuracy']:.4f} | "
                f"{own['mean_samples']:.2f} | {tokens} | {ac['accuracy']:.4f} | {ac['mean_samples']:.2f} | "
                f"{esc['accuracy']:.4f} | {esc['mean_samples']:.2f} | "
                f"{'-' if saving is None else f'{100 * saving:.1f}%'} |"
            )
        lines.append("")
    gains = metrics.get("gains")
    if gains:
        lines += [
            "Predicted against realised gains (rows where the horizon could change the answer, datasets weighted "
            "equally; the full reliability bins are in policy.json):",
            "",
            "| horizon | rows | mean predicted | mean realised | calibration error | R² |",
            "|---|---|---|---|---|---|",
        ]
        for entry in gains.get("horizons", []):
            r2 = "-" if entry["r2"] is None else f"{entry['r2']:.3f}"
            lines.append(
                f"| {entry['horizon']} | {entry['rows']} | {entry['mean_predicted']:.4f} | "
                f"{entry['mean_realised']:.4f} | {entry['calibration_error']:.4f} | {r2} |"
            )
        lines.append("")
    rest = {k: v for k, v in metrics.items() if k not in ("held_out_questions", "decisions", "gains")}
    if rest:
        lines += ["```json", json.dumps(rest, indent=2), "```"]
    return lines


def model_card(document: dict[str, Any]) -> str:
    """A Markdown model card from a policy.json document."""
    training = document.get("training", {})
    lines = [
        "# Learned stop policy",
        "",
        f"A `{document.get('model')}` gain model for `budgetctl.learn.LearnedStop` "
        f"(artifact schema {document.get('schema_version')}, feature schema {document.get('feature_schema')}, "
        f"budgetctl {document.get('budgetctl_version')}, written {document.get('created')}).",
        "",
        "It predicts, after every sample, the expected change in the correctness of the current majority "
        "answer if h more samples are drawn, for h in "
        f"{', '.join(str(h) for h in document.get('horizons', []))}, and stops when no reachable horizon "
        "buys more than `value` accuracy per 1,000 tokens. Assumes majority vote.",
        "",
        f"- value (operating point): {_fmt(document.get('value'))} accuracy per 1,000 tokens",
        f"- tokens per sample when a run reports none: {_fmt(document.get('default_tokens'))}",
        f"- parameters: `{json.dumps(document.get('params', {}))}`",
        "",
        "## Training data",
        "",
    ]
    files = training.get("files", [])
    if files:
        lines += ["| file | bytes | sha256 |", "|---|---|---|"]
        lines += [f"| `{f['path']}` | {f['bytes']} | `{f['sha256']}` |" for f in files]
    else:
        lines.append("(rows given directly; no files recorded)")
    datasets = training.get("datasets", {})
    if datasets:
        lines += ["", "Questions per dataset: " + ", ".join(f"{k} {v}" for k, v in datasets.items()) + "."]
    skipped = training.get("skipped", [])
    if skipped:
        lines += ["", f"Skipped {len(skipped)} malformed line(s):"]
        lines += [f"- `{s[0]}` line {s[1]}: {s[2]}" for s in skipped]
    lines += ["", "## Command", "", "```", str(document.get("command") or "(not recorded)"), "```", ""]
    lines += ["## Held-out metrics", "", *_metric_lines(document.get("metrics") or {})]
    lines += ["", "## Features", ""]
    lines += [f"- `{name}`: {text}" for name, text in FEATURE_DOCS]
    return "\n".join(lines) + "\n"


# -- per-task policies written by ``budgetctl train`` ----------------------------------------------------------
#: The ``format`` of a per-task policy (a learned risk table or a tuned rule per task).
TASK_FORMAT = "budgetctl.task-stop"
TASK_SCHEMA_VERSION = 1
#: Largest full budget (samples per question) a task table may describe.
MAX_POOL_SIZE = 512


def save_task_policy(
    fits: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    settings: dict[str, Any],
    training: dict[str, Any],
    command: str | None = None,
    metrics: dict[str, Any] | None = None,
    force: bool = False,
) -> str:
    """Write the :class:`~budgetctl.learn._tune.TaskFit` s of ``budgetctl train`` as one artifact (atomically)."""
    from ._tune import all_states

    arrays: dict[str, np.ndarray] = {}
    tasks = []
    for i, fit in enumerate(fits):
        entry = fit.summary()
        if fit.risk is not None:
            states = all_states(fit.n)
            arrays[f"risk.{i}"] = fit.risk[states[:, 0], states[:, 1], states[:, 2]].astype(np.float32)
            entry["table"] = f"risk.{i}"
        else:
            entry["table"] = None
        tasks.append(entry)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    document = {
        "format": TASK_FORMAT,
        "schema_version": TASK_SCHEMA_VERSION,
        "budgetctl_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tasks": tasks,
        "settings": settings,
        "training": training,
        "command": command,
        "metrics": metrics or {},
    }
    return save_directory(path, document, buffer.getvalue(), task_model_card, load_task_policy, force=force)


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``policy.json`` of either artifact format, its format and version checked."""
    target = _policy_file(path)
    try:
        document = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ArtifactError(f"{target}: not a readable policy file ({error})") from None
    if isinstance(document, dict) and document.get("format") == TASK_FORMAT:
        schema = document.get("schema_version")
        if isinstance(schema, bool) or not isinstance(schema, int) or schema != TASK_SCHEMA_VERSION:
            raise ArtifactError(
                f"{target}: schema_version {schema!r} of {TASK_FORMAT} (this budgetctl {__version__} reads "
                f"{TASK_SCHEMA_VERSION}; a newer one needs a newer budgetctl)"
            )
        return document
    return read_metadata(path)


def load_task_policy(path: str | os.PathLike[str], task: str | None = None) -> Any:
    """Load a policy written by ``budgetctl train``: the task's policy, or every task's together.

    With ``task`` it is that task's policy; with one task, that one; with several and no ``task``,
    a policy that stops only when every task's would (the most cautious of them).
    """
    from ..policies._base import AllOf, StopPolicy
    from ..policies._spec import parse_policy
    from ._taskpolicy import RiskStop
    from ._tune import all_states

    target = _policy_file(path)
    document = read_document(path)
    if document.get("format") != TASK_FORMAT:
        if task is not None:
            raise ArtifactError(f"{target}: task= applies to policies of format {TASK_FORMAT}")
        return load_policy(path)
    tasks = document.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ArtifactError(f"{target}: no tasks")
    arrays = read_weights(target, document, allowed=("risk.",))
    policies: dict[str, StopPolicy] = {}
    for i, entry in enumerate(tasks):
        where = f"{target}: tasks[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str):
            raise ArtifactError(f"{where}: malformed")
        n = entry.get("pool_size")
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_POOL_SIZE:
            raise ArtifactError(f"{where}: pool_size must be an int in 2..{MAX_POOL_SIZE}, got {n!r}")
        table = entry.get("table")
        policy: StopPolicy
        if table is None:
            rule = entry.get("rule")
            if not isinstance(rule, str) or not rule.startswith(("ac:threshold=", "esc:window=")):
                raise ArtifactError(f"{where}: rule must be an ac or esc spec, got {rule!r}")
            try:
                policy = parse_policy(rule)
            except (ValueError, TypeError) as error:
                raise ArtifactError(f"{where}: bad rule {rule!r} ({error})") from None
        else:
            eps = entry.get("point")
            if not isinstance(table, str) or table not in arrays:
                raise ArtifactError(f"{where}: table {table!r} is not in the weights")
            if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0.0 <= eps <= 1.0:
                raise ArtifactError(f"{where}: point (eps) must be in [0, 1], got {eps!r}")
            flat = arrays[table]
            states = all_states(n)
            if flat.shape != (len(states),) or flat.dtype.kind != "f" or not np.isfinite(flat).all():
                raise ArtifactError(
                    f"{where}: table {table!r} must hold {len(states)} finite floats for pool size {n}, "
                    f"got shape {flat.shape}"
                )
            if flat.size and (flat.min() < 0 or flat.max() > 1):
                raise ArtifactError(f"{where}: table {table!r} holds values outside [0, 1]")
            dense = np.ones((n + 1, n + 1, n + 1), dtype=np.float32)
            dense[states[:, 0], states[:, 1], states[:, 2]] = flat
            dense[n] = 0.0
            policy = RiskStop(dense, float(eps), entry["task"])
        policies[entry["task"]] = policy
    if task is not None:
        if task not in policies:
            raise ArtifactError(f"{target}: no task {task!r}; it has {', '.join(sorted(policies))}")
        return policies[task]
    if len(policies) == 1:
        return next(iter(policies.values()))
    return AllOf(tuple(policies[name] for name in sorted(policies)))


def trained_on(path: str | os.PathLike[str], files: Sequence[str]) -> list[str]:
    """Which of ``files`` the policy at ``path`` was trained on (by sha256), to warn about in-sample results."""
    try:
        document = read_document(path)
    except ArtifactError:
        return []
    training = document.get("training")
    recorded = training.get("files", []) if isinstance(training, dict) else []
    hashes = {f.get("sha256") for f in recorded if isinstance(f, dict)}
    if not hashes:
        return []
    return [f for f in files if os.path.isfile(f) and _sha256(f) in hashes]


def task_model_card(document: dict[str, Any]) -> str:
    """A Markdown model card for a per-task policy."""
    settings = document.get("settings", {})
    lines = [
        "# Stop policy, per task",
        "",
        f"Written by `budgetctl train` (budgetctl {document.get('budgetctl_version')}, {document.get('created')}). "
        "For each task: a learned table of P(the current leader is not the full budget's majority) by "
        "(samples so far, leader votes, runner-up votes), stopping when it is at most eps, or the tuned "
        "rule where the learned families did not beat it on held-out folds.",
        "",
        f"Operating point: expected accuracy loss against the full budget at most {settings.get('max_loss')} at "
        f"confidence {settings.get('confidence')} (Learn-then-Test, fixed-sequence, normal bound over questions), "
        f"{settings.get('folds')} cross-validation folds, {settings.get('orders')} random orders per question.",
        "",
        "| task | pool size | shipped | operating point | loss bound | held-out cost (shipped) | "
        "held-out cost (AC tuned) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in document.get("tasks", []):
        held = entry.get("held_out", {})
        own = held.get(entry.get("family"), {})
        ac = held.get("ac", {})
        lines.append(
            f"| {entry.get('task')} | {entry.get('pool_size')} | {entry.get('family')} | {_fmt(entry.get('point'))} | "
            f"{_fmt(entry.get('loss_bound'))} | {_fmt(own.get('cost'))} | {_fmt(ac.get('cost'))} | "
            f"{entry.get('note', '')} |"
        )
    training = document.get("training", {})
    lines += ["", "## Training data", ""]
    files = training.get("files", [])
    lines += ["| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| `{f['path']}` | {f['bytes']} | `{f['sha256']}` |" for f in files]
    lines += ["", "## Command", "", "```", str(document.get("command") or "(not recorded)"), "```", ""]
    return "\n".join(lines) + "\n"


def artifact_paths(spec: str) -> list[str]:
    """The policy directories a policy spec names (a bare directory, or ``path=DIR`` inside a spec)."""
    import re

    found = [spec] if os.path.isdir(spec) else []
    found += [m.group(1) for m in re.finditer(r"path=([^,|&()\s]+)", spec) if os.path.isdir(m.group(1))]
    return found


def in_sample_warning(spec: str, files: Sequence[str]) -> str | None:
    """A warning when ``files`` include pools the policy ``spec`` names was trained on (results would be in-sample)."""
    hits = sorted({f for path in artifact_paths(spec) for f in trained_on(path, files)})
    if not hits:
        return None
    return (
        f"warning: the policy was trained on {', '.join(hits)}; results on its own training pools are in-sample "
        "and overstate how it does on new questions (hold questions out, e.g. train with --dataset or on a split)"
    )
