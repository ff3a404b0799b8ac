"""Fuzz targets: what each input parser may raise, and the hypothesis strategies that feed it.

A target runs one generated input through a parser and lets through only the parser's documented
exceptions; anything else (a ``RecursionError``, ``OverflowError``, ``TypeError``, ``KeyError``, a
``MemoryError``...) escapes, which is a raw traceback for a user and a failure here. The targets
are run by ``tests/test_fuzz.py`` (few examples, in CI) and by ``benchmarks/reliability.py`` (many,
counting cases and failures for ``docs/reliability.md``).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

import budgetctl
from budgetctl._jsonl import TraceFormatError
from budgetctl._pool import load_pool
from budgetctl._trace import TraceWarning, read_runs
from budgetctl.policies import PolicySpecError, parse_policy

# -- strategies --------------------------------------------------------------------------------------------

#: JSON numbers that have broken readers: huge, tiny, negative, long integers, and ordinary ones.
numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e300, -1e300, 10**4000, -(10**400), 2**63, 0.5, 1.0, 5e-324]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

SAMPLE_KEYS = ["answer", "tokens", "logprob", "score", "confidence", "correct"]
POOL_KEYS = ["id", "samples", "gold", "dataset", "model", "question"]
EVENT_KEYS = ["event", "run", "v", "config", "meta", "i", "at", "answer", "tokens", "latency", "logprob"]


def _mostly(keys: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values, max_size=len(keys))


pool_samples = _mostly(SAMPLE_KEYS, json_values | st.sampled_from(["a", "b", None]))
pool_records = st.fixed_dictionaries(
    {"id": st.text(max_size=5) | st.integers(), "samples": st.lists(pool_samples, max_size=4)},
    optional={k: json_values for k in ("gold", "dataset", "model", "question")},
) | _mostly(POOL_KEYS, json_values)
events = st.fixed_dictionaries(
    {"event": st.sampled_from(["start", "sample", "decision", "stop", "other"]), "run": st.sampled_from(["r1", "r2"])},
    optional={k: json_values for k in EVENT_KEYS[2:]} | {"v": st.sampled_from([1, 2, "1", True, None])},
)

#: Damage a valid line may suffer: cut short, a byte changed, deep nesting, a huge number, a stray newline.
damage = st.sampled_from(["none", "cut", "flip", "nest", "digits", "newline", "nan", "torn-mark"])


def _damaged(line: bytes, how: str, where: int) -> bytes:
    if not line or how == "none":
        return line
    at = where % len(line)
    return {
        "cut": line[:at],
        "flip": line[:at] + bytes([line[at] ^ 0x5A]) + line[at + 1 :],
        "nest": b'{"x":' + b"[" * 5000 + line,
        "digits": line[:at] + b"9" * 5000 + line[at:],
        "newline": line[:at] + b"\n" + line[at:],
        "nan": line.replace(b"null", b"NaN", 1),
        "torn-mark": line[:at] + b" <torn>",
    }[how]


@st.composite
def files(draw: st.DrawFn, records: st.SearchStrategy[Any]) -> bytes:
    """A JSON-lines file: generated records, each possibly damaged, maybe with raw bytes and no final newline."""
    lines = []
    for record in draw(st.lists(records, min_size=1, max_size=5)):
        line = json.dumps(record).encode()
        lines.append(_damaged(line, draw(damage), draw(st.integers(min_value=0, max_value=10**6))))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.binary(max_size=40)))
    data = b"\n".join(lines)
    return data if draw(st.booleans()) else data + b"\n"


@st.composite
def maybe_gzipped(draw: st.DrawFn, content: st.SearchStrategy[bytes]) -> tuple[str, bytes]:
    """``(suffix, bytes)``: plain ``.jsonl``, or ``.jsonl.gz`` whole, cut short, or not gzip at all."""
    data = draw(content)
    kind = draw(st.sampled_from(["plain", "gz", "gz-cut", "gz-fake"]))
    if kind == "plain":
        return ".jsonl", data
    packed = gzip.compress(data)
    if kind == "gz-cut":
        packed = packed[: draw(st.integers(0, max(len(packed) - 1, 0)))]
    elif kind == "gz-fake":
        packed = data
    return ".jsonl.gz", packed


registry_names = ["fixed", "ac", "esc", "stable", "confidence", "unbeatable", "max-tokens", "learned", "nope"]
parameter_names = ["n", "threshold", "window", "k", "criterion", "top_k", "tokens", "value", "path", "x"]
parameter_values = st.one_of(
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "9" * 5000, "true", "none", "", "beta", "=", ":"]),
    st.text(max_size=8),
)
one_spec = st.builds(
    lambda name, pairs: name + (":" + ",".join(f"{k}={v}" for k, v in pairs) if pairs else ""),
    st.sampled_from(registry_names) | st.text(max_size=6),
    st.lists(st.tuples(st.sampled_from(parameter_names) | st.text(max_size=4), parameter_values), max_size=3),
)
specs = st.one_of(
    st.text(max_size=40),
    st.lists(one_spec, min_size=1, max_size=3).flatmap(
        lambda parts: st.lists(st.sampled_from(["|", "&"]), min_size=len(parts) - 1, max_size=len(parts) - 1).map(
            lambda ops: parts[0] + "".join(op + part for op, part in zip(ops, parts[1:], strict=True))
        )
    ),
)

# -- targets -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One parser under fuzz: its inputs, how to run one, and the exceptions it documents."""

    name: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], object]
    allowed: tuple[type[BaseException], ...]
    #: Why the target cannot run in this checkout (a hardening it tests is not merged in), or None.
    missing: Callable[[], str | None] = lambda: None


def _in_file(suffix: str, data: bytes, read: Callable[[str], object]) -> object:
    folder = tempfile.mkdtemp(prefix="budgetctl-fuzz-")
    path = os.path.join(folder, "input" + suffix)
    try:
        with open(path, "wb") as stream:
            stream.write(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceWarning)  # torn lines are skipped with a warning, by design
            return read(path)
    finally:
        os.unlink(path)
        os.rmdir(folder)


def _pool_reader(skip_bad: bool) -> Callable[[tuple[str, bytes]], object]:
    def read(item: tuple[str, bytes]) -> object:
        try:
            return _in_file(*item, read=lambda path: load_pool(path, skip_bad=skip_bad))
        except TraceFormatError:
            raise
        except ValueError as error:  # documented: a question id twice
            if str(error).startswith("question id "):
                raise TraceFormatError(item[0], None, str(error)) from None
            raise

    return read


def _read_trace(item: tuple[str, bytes]) -> object:
    return _in_file(*item, read=read_runs)


# -- the learned-policy artifact loader ------------------------------------------------------------------

DEFAULT_POLICY = os.path.join(os.path.dirname(budgetctl.__file__), "data", "policies", "default")
weight_files = st.sampled_from(
    ["../weights.npz", "/etc/hostname", "sub/w.npz", "", ".", "policy.json", "MODEL_CARD.md"]
)
array_damage = st.sampled_from(["none", "drop", "extra", "reshape", "inf", "huge", "ints", "empty"])


@st.composite
def artifacts(draw: st.DrawFn) -> dict[str, Any]:
    """How to damage a valid artifact: fields of policy.json replaced or dropped, its weights altered."""
    edits = draw(
        st.lists(
            st.tuples(
                st.integers(0, 10**6), st.sampled_from(["set", "drop", "weights-file"]), json_values | weight_files
            ),
            max_size=3,
        )
    )
    return {
        "seed": draw(st.integers(0, 1)),
        "edits": edits,
        "damage": draw(array_damage),
        "member": draw(st.integers(0, 1000)),
        "reseal": draw(st.booleans()),  # recompute the weights' sha256, as a crafted artifact would
        "cut": draw(st.none() | st.integers(0, 30_000)),
    }


_SEEDS: list[str] = []


def _seed_artifacts() -> list[str]:
    """Valid artifacts to damage: the shipped default (whatever format this checkout ships) and a
    gain-model policy trained here on synthetic questions."""
    if not _SEEDS:
        import random

        from budgetctl._pool import Pool, Question
        from budgetctl._sample import Sample
        from budgetctl.learn import LearnedStop

        rng = random.Random(0)
        questions = []
        for i in range(24):
            p = rng.uniform(0.3, 0.9)
            answers = ["a" if rng.random() < p else rng.choice("bcd") for _ in range(10)]
            samples = tuple(Sample(answer=a, tokens=rng.randint(5, 50)) for a in answers)
            questions.append(
                Question(id=f"q{i}", samples=samples, correct_keys=frozenset({"a"}), gold="a", dataset="t")
            )
        policy = LearnedStop(model="linear", orders=2, target_orders=8, folds=2, n_jobs=1)
        policy.fit(Pool(questions=questions, files=[]))
        folder = tempfile.mkdtemp(prefix="budgetctl-fuzz-seed-")
        policy.save(os.path.join(folder, "gain"))
        _SEEDS[:] = [DEFAULT_POLICY, os.path.join(folder, "gain")]
    return _SEEDS


def _paths(document: Any) -> list[tuple[Any, ...]]:
    # Every field of policy.json, and every field or item one level down.
    paths: list[tuple[Any, ...]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            paths.append((key,))
            children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
            paths += [(key, child) for child, _ in children]
    return paths


def _edit(document: dict[str, Any], path: tuple[Any, ...], how: str, value: Any) -> None:
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    if how == "drop":
        parent.pop(path[-1])
    elif how == "set":
        parent[path[-1]] = value
    elif isinstance(document.get("weights"), dict) and isinstance(value, str):
        document["weights"]["file"] = value


def _damage_arrays(arrays: dict[str, Any], name: str, damage: str) -> None:
    import numpy as np

    if damage == "drop":
        del arrays[name]
    elif damage == "extra":
        arrays["model.extra"] = np.zeros(3)
    elif damage == "reshape":
        arrays[name] = np.resize(arrays[name], (2, 3))
    elif damage in ("inf", "huge") and arrays[name].dtype.kind == "f" and arrays[name].size:
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = np.inf if damage == "inf" else np.finfo(arrays[name].dtype).max
    elif damage == "ints":
        arrays[name] = np.full(arrays[name].shape, -1, dtype=np.int64)
    elif damage == "empty":
        arrays[name] = np.zeros(0)


def _load_artifact(item: dict[str, Any]) -> object:
    import hashlib

    import numpy as np
    from conftest import make_state

    seed = _seed_artifacts()[item["seed"]]
    folder = tempfile.mkdtemp(prefix="budgetctl-fuzz-artifact-")
    try:
        for entry in os.listdir(seed):
            shutil.copy(os.path.join(seed, entry), folder)
        with open(os.path.join(folder, "policy.json"), encoding="utf-8") as stream:
            document = json.load(stream)
        weights = document.get("weights", {}).get("file") if isinstance(document.get("weights"), dict) else None
        if isinstance(weights, str) and os.path.isfile(os.path.join(folder, weights)):
            with np.load(os.path.join(folder, weights), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            if arrays:
                _damage_arrays(arrays, sorted(arrays)[item["member"] % len(arrays)], item["damage"])
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            blob = buffer.getvalue()
            if item["cut"] is not None:
                blob = blob[: item["cut"]]
            with open(os.path.join(folder, weights), "wb") as stream:
                stream.write(blob)
            if item["reseal"]:
                document["weights"]["sha256"] = hashlib.sha256(blob).hexdigest()
        for index, how, value in item["edits"]:
            paths = _paths(document)
            if paths:
                _edit(document, paths[index % len(paths)], how, value)
        with open(os.path.join(folder, "policy.json"), "w", encoding="utf-8") as stream:
            json.dump(document, stream)
        policy = parse_policy(folder)  # the public way to load a trained policy, whatever its format
        # What loads must decide without error: every index and horizon was checked at load.
        for counts in ({"a": 1}, {"a": 3, "b": 2}, {"a": 1, "b": 1, "c": 1}):
            policy(make_state(counts))
        return policy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


try:
    from budgetctl.learn import ArtifactError
except ImportError:  # without budgetctl[learn]: the target reports itself missing

    class ArtifactError(ValueError):  # type: ignore[no-redef]
        """Stands in for the real one when budgetctl.learn cannot be imported."""


def _learn_missing() -> str | None:
    try:
        from budgetctl.learn import _artifact  # noqa: F401
    except ImportError as error:
        return f"budgetctl.learn cannot be imported without budgetctl[learn] ({error})"
    return None


# -- the replay server's request parsing -----------------------------------------------------------------

REQUEST_KEYS = ["model", "messages", "prompt", "n", "max_tokens", "stream", "stream_options", "logprobs", "seed"]
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]) | json_values, "content": json_values}),
    max_size=3,
)
request_bodies = st.one_of(
    st.binary(max_size=60),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["replay", ""]) | json_values},
        optional={"messages": messages | json_values, "prompt": json_values, "n": numbers, "max_tokens": numbers}
        | {"stream": json_values, "stream_options": json_values, "logprobs": json_values},
    ).map(lambda body: json.dumps(body).encode()),
    st.sampled_from([b"[" * 100_000, b'{"model": "replay", "n": ' + b"9" * 5000 + b"}", b"{" * 3000, b"\xff\xfe"]),
).flatmap(lambda body: st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/reset"]), st.just(body)))

_CLIENT: dict[str, Any] = {}


def _server_request(item: tuple[str, bytes]) -> object:
    from starlette.testclient import TestClient

    from budgetctl.serve import ReplayServer

    if "client" not in _CLIENT:
        folder = tempfile.mkdtemp(prefix="budgetctl-fuzz-server-")
        pool = os.path.join(folder, "pool.jsonl")
        with open(pool, "w", encoding="utf-8") as stream:
            stream.write(
                json.dumps({"id": "q", "gold": "a", "question": "hi", "samples": [{"answer": "a", "tokens": 3}]})
            )
        _CLIENT["client"] = TestClient(ReplayServer(pool).app, raise_server_exceptions=True)
    path, body = item
    response = _CLIENT["client"].post(path, content=body, headers={"content-type": "application/json"})
    if response.status_code >= 500:
        raise AssertionError(f"{path} answered {response.status_code} to {body[:80]!r}: {response.text[:200]}")
    return response


def _serve_missing() -> str | None:
    if importlib.util.find_spec("starlette") is None:
        return "the replay server needs budgetctl[serve] (starlette)"
    return None


TARGETS = [
    # load_pool documents TraceFormatError (file:line) and a ValueError for a question id seen twice.
    Target("pool reader (load_pool)", maybe_gzipped(files(pool_records)), _pool_reader(False), (TraceFormatError,)),
    Target("pool reader, skip_bad=True", maybe_gzipped(files(pool_records)), _pool_reader(True), (TraceFormatError,)),
    Target("trace reader (read_runs)", maybe_gzipped(files(events)), _read_trace, (TraceFormatError,)),
    # A spec naming an existing path loads it as a trained policy: ArtifactError when it is not one.
    Target("policy spec parser (parse_policy)", specs, parse_policy, (PolicySpecError, ArtifactError)),
    # Loading documents ArtifactError (PolicySpecError for a spec); what loads must then decide without raising.
    Target(
        "artifact loader (trained-policy directory)",
        artifacts(),
        _load_artifact,
        (ArtifactError, PolicySpecError),
        _learn_missing,
    ),
    # Any status but 5xx; the test client re-raises an exception the app lets escape.
    Target("replay server requests", request_bodies, _server_request, (), _serve_missing),
]


def check(target: Target, value: Any) -> None:
    """Run ``value`` through ``target``; let through only its documented exceptions.

    A warning is a failure too (numpy's overflow warnings mean a value went unchecked), except the
    ``TraceWarning`` a reader gives by design for a line it skips.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", TraceWarning)
        with contextlib.suppress(*target.allowed):
            target.run(value)
