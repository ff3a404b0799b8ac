"""The code in README.md and docs/*.md runs, so the docs cannot drift from the code.

Every fenced block carries a language, and the language says what the suite does with it:

* ``python``: run with `sybil <https://sybil.readthedocs.io>`_, block after block in one namespace
  per document (top-level ``await``, ``async with`` and ``async for`` work, as in a notebook);
* ``sh``: each command run (``budgetctl ...`` through ``budgetctl.cli.main`` in this process,
  ``python ...`` with this interpreter) in a scratch copy of the repository's layout whose ``../shared`` is the real
  one; ``simulate`` runs with ``--orders 3 --jobs 1`` to stay quick, and every file a command is told to
  write (``--plot``, ``--json``, ``-o``) must exist afterwards;
* ``json``: parsed (and the trace events of docs/trace-format.md compared with events a real run
  writes);
* ``text``: output shown to the reader, not run.

A ``python`` or ``sh`` block whose first line is ``# illustrative: <why>`` is not run (it needs a
model server, the network, or minutes); the marker is visible to readers too. Hidden set-up for a
block (a fake ``my_llm``) goes in an ``<!-- invisible-code-block: python -->`` comment.
``python tests/test_docs.py`` prints how many blocks run and how many are illustrative.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import inspect
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "json", "text"}
ILLUSTRATIVE = re.compile(r"\A#\s*illustrative:\s*\S")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```\s*$", re.MULTILINE | re.DOTALL)
#: Folders of the checkout that documented commands write into (copied into the scratch checkout, not linked).
WRITTEN_FOLDERS = {"policies"}
#: Flags whose value is a file the command writes.
OUTPUT_FLAGS = {"--plot", "--json", "-o", "--output"}


def blocks(path: Path) -> Iterator[tuple[int, str, str]]:
    """``(line, language, body)`` of every fenced code block of a markdown file."""
    text = path.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, match["lang"].strip(), match["body"]


def is_illustrative(body: str) -> bool:
    return bool(ILLUSTRATIVE.match(body.lstrip()))


def where(example: Example) -> str:
    return f"{Path(example.path).relative_to(ROOT)}:{example.line}"


def run_python(example: Example) -> None:
    """Run a python block in its document's namespace; top-level ``await`` runs in a fresh event loop."""
    source: str = example.parsed
    if is_illustrative(source):
        return
    padded = "\n" * (example.line + example.parsed.line_offset) + source
    code = compile(padded, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    namespace = example.namespace
    if code.co_flags & inspect.CO_COROUTINE:

        async def main() -> None:
            await eval(code, namespace)

        anyio.run(main)
    else:
        exec(code, namespace)
    namespace.pop("__builtins__", None)


def commands(body: str) -> Iterator[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def argv_of(command: str, cwd: Path, location: str) -> list[str]:
    """The command as an argument list, globs expanded; ``budgetctl`` stays the first word."""
    words = shlex.split(command, comments=True)
    expanded: list[str] = []
    for word in words:
        matches = sorted(glob.glob(word, root_dir=cwd)) if any(c in word for c in "*?[") else []
        expanded += matches or [word]
    program, *args = expanded
    if program == "budgetctl":
        if args[:1] == ["simulate"] and "--help" not in args:
            if "--orders" in args:
                args[args.index("--orders") + 1] = "3"
            else:
                args += ["--orders", "3"]
            if "--jobs" not in args:
                args += ["--jobs", "1"]
        return [program, *args]
    if program in ("python", "python3"):
        return [sys.executable, *args]
    raise AssertionError(f"{location}: cannot run {program!r} in the tests; start the block with '# illustrative: why'")


def run_command(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Exit status and stderr of a command: ``budgetctl`` in this process (as its entry point would), else a child."""
    if argv[0] == "budgetctl":
        from budgetctl.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv[1:])
            except SystemExit as exit_:  # --help, and argparse's own errors
                code = exit_.code if isinstance(exit_.code, int) else 1
        return code, err.getvalue()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stderr


def run_shell(example: Example) -> None:
    """Run each command of an ``sh`` block; it must exit 0 and write the files it names."""
    body: str = example.parsed
    if is_illustrative(body):
        return
    cwd: Path = example.namespace["__cwd__"]
    for command in commands(body):
        if "../shared" in command and not SHARED.exists():
            continue  # the real pools are not on this machine
        argv = argv_of(command, cwd, where(example))
        code, err = run_command(argv, cwd)
        assert code == 0, f"{where(example)}: `{command}` exited {code}:\n{err[-2000:]}"
        for flag, value in itertools.pairwise(argv):
            if flag in OUTPUT_FLAGS and value != "-":
                assert (cwd / value).exists(), f"{where(example)}: `{command}` did not write {value}"


def check_json(example: Example) -> None:
    json.loads(example.parsed)


PARSER = Sybil(
    parsers=[
        CodeBlockParser("python", run_python),
        CodeBlockParser("sh", run_shell),
        CodeBlockParser("json", check_json),
    ]
)


def _checkout_entries() -> list[Path]:
    # The top-level entries git tracks (a user's own frontier.png beside README.md is not part of
    # the layout the docs assume); every entry where this is no git checkout.
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return list(ROOT.iterdir())
    names = {path.split("/", 1)[0] for path in listed.split("\0") if path}
    return [ROOT / name for name in sorted(names) if (ROOT / name).exists()]


def scratch_repository(base: Path) -> Path:
    """A directory laid out like a clone, with ``../shared`` beside it.

    Its entries link to this checkout's, except the folders the docs write into (``policies/``),
    which are copied: a documented ``train -o policies/...`` must not write into the checkout.
    """
    work = base / "repo"
    work.mkdir()
    for entry in _checkout_entries():
        if entry.name in WRITTEN_FOLDERS:
            shutil.copytree(entry, work / entry.name)
        elif entry.name not in (".git", ".venv") and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    if SHARED.exists():
        (base / "shared").symlink_to(SHARED)
    return work


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_doc_examples_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = scratch_repository(tmp_path)
    monkeypatch.chdir(work)
    document = PARSER.parse(doc)
    document.namespace["__cwd__"] = work
    for example in document.examples():
        example.evaluate()


def tally() -> dict[str, Counter[str]]:
    """Per document: blocks ``run``, ``illustrative``, ``checked`` (json) and ``output`` (text)."""
    counts: dict[str, Counter[str]] = {}
    for doc in DOCS:
        counter: Counter[str] = Counter()
        for _, language, body in blocks(doc):
            if language in ("python", "sh"):
                counter["illustrative" if is_illustrative(body) else "run"] += 1
            else:
                counter["checked" if language == "json" else "output"] += 1
        counts[str(doc.relative_to(ROOT))] = counter
    return counts


def test_every_block_says_what_it_is() -> None:
    for doc in DOCS:
        for line, language, body in blocks(doc):
            location = f"{doc.relative_to(ROOT)}:{line}"
            assert language in LANGUAGES, f"{location}: a code block needs one of {sorted(LANGUAGES)}, got {language!r}"
            if language in ("python", "sh") and is_illustrative(body):
                reason = body.lstrip().splitlines()[0].partition(":")[2].strip()
                assert len(reason) >= 8, f"{location}: say why the block is only illustrative"
    total = sum(tally().values(), Counter())
    assert total["run"] > total["illustrative"], total  # most of the code in the docs runs


def test_no_internal_jargon() -> None:
    # Issue numbers mean nothing to a reader; line 33 of the Game of 24 pool was corrected at the source.
    jargon = re.compile(r"\bissue \d+\b|\bthe issue'?s?\b|line 33|:33\b", re.IGNORECASE)
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            assert not jargon.search(line), f"{doc.relative_to(ROOT)}:{number}: {line.strip()}"


def trace_examples() -> dict[str, dict[str, Any]]:
    """The event examples of docs/trace-format.md, by event kind."""
    found = {}
    for _, language, body in blocks(ROOT / "docs" / "trace-format.md"):
        if language == "json":
            event = json.loads(body)
            if "event" in event:
                found[event["event"]] = event
    return found


def test_trace_format_examples_match_what_a_run_writes(tmp_path: Path) -> None:
    import budgetctl as bc
    from budgetctl.policies import AdaptiveConsistency, MaxSamples

    async def sample() -> bc.Sample:
        return bc.Sample(answer="42", tokens=212, logprob=-14.2)

    path = tmp_path / "runs.jsonl"
    policy = AdaptiveConsistency(0.95) | MaxSamples(40)
    meta = {"id": "q17", "gold": "42"}
    bc.solve_sync(
        sample, deadline=2.0, budget=bc.Budget(tokens=8000), policy=policy, concurrency=4, trace=str(path), meta=meta
    )
    written: dict[str, dict[str, Any]] = {}
    for event in bc.read_events(str(path)):
        written.setdefault(event["event"], event)
    documented = trace_examples()
    assert set(documented) == {"start", "sample", "decision", "stop"}
    for kind, example in documented.items():
        real = written[kind]
        assert set(example) == set(real), kind
        for nested in ("config", "state"):
            if nested in real:
                assert set(example[nested]) == set(real[nested]), f"{kind}.{nested}"
    assert documented["start"]["config"]["aggregator"] == written["start"]["config"]["aggregator"]
    assert documented["start"]["config"]["policy"] == written["start"]["config"]["policy"]


def test_the_torch_hint_names_the_cpu_wheel_index() -> None:
    from budgetctl._optional import import_optional

    with pytest.raises(ImportError) as raised:
        import_optional("budgetctl_no_such_module", "torch", "The MLP learned policy")
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in str(raised.value)
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in (ROOT / "README.md").read_text()


if __name__ == "__main__":
    totals: Counter[str] = Counter()
    for name, counter in tally().items():
        totals += counter
        print(f"{name:28} " + ", ".join(f"{k} {counter[k]}" for k in ("run", "illustrative", "checked", "output")))
    print(f"{'all':28} " + ", ".join(f"{k} {totals[k]}" for k in ("run", "illustrative", "checked", "output")))
