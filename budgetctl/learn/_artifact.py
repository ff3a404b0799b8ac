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
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from ._features import FEATURE_DOCS, FEATURE_NAMES, FEATURE_SCHEMA
from ._models import Calibration, model_from_arrays

if TYPE_CHECKING:
    from ._policy import LearnedStop

__all__ = ["save_policy", "load_policy", "describe_files", "ArtifactError", "SCHEMA_VERSION", "FORMAT"]

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
) -> str:
    """Write ``policy`` (fitted) to the directory ``path``, creating it; returns the path."""
    model = policy._fitted()
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"model.{k}": v for k, v in model.arrays().items()}
    arrays.update({f"calibration.{k}": v for k, v in policy.calibration_.arrays().items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    weights = buffer.getvalue()
    (directory / WEIGHTS_FILE).write_bytes(weights)
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
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights).hexdigest()},
    }
    text = json.dumps(document, indent=2, sort_keys=False, default=_json_default) + "\n"
    (directory / POLICY_FILE).write_text(text, encoding="utf-8")
    (directory / CARD_FILE).write_text(model_card(document), encoding="utf-8")
    return os.fspath(directory)


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


def load_policy(path: str | os.PathLike[str]) -> LearnedStop:
    """Load a trained policy from a directory written by :meth:`LearnedStop.save` or ``budgetctl train``."""
    from ._policy import LearnedStop

    document = read_metadata(path)
    target = _policy_file(path)
    weights_path = target.parent / str(document.get("weights", {}).get("file", WEIGHTS_FILE))
    try:
        blob = weights_path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{target}: cannot read its weights {weights_path}: {error}") from None
    expected = document.get("weights", {}).get("sha256")
    if expected != hashlib.sha256(blob).hexdigest():
        raise ArtifactError(f"{weights_path}: sha256 does not match {target.name} (corrupt or replaced)")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
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
