"""A CLI that explains itself: user errors in one line, bugs with a traceback, did-you-mean, ``doctor``, ``ask``.

``ask`` runs against the real replay server on a loopback port (or against a port where nothing
listens); the timing contrasts are large (replies of 5 s against a 0.2 s deadline).
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from budgetctl._pool import load_pool
from budgetctl.cli import _doctor, is_user_error, main
from budgetctl.policies import PolicySpecError

QUESTION = "Q: What is six times seven?"


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- errors: one line for the user's, a traceback for ours -----------------------------------------------------
def test_user_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["simulate", str(tmp_path / "missing.jsonl"), "--orders", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.jsonl" in err and "Traceback" not in err
    assert main(["simulate", "--ttft-ms", "-1", "--orders", "2"]) == 2  # a check the library makes on purpose
    err = capsys.readouterr().err
    assert err.startswith("budgetctl simulate: error: ") and "ttft" in err and "Traceback" not in err


def test_a_bug_shows_its_traceback_and_asks_for_a_report(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[_doctor.Check]:
        return [_doctor.Check("x", True, str(int("not a number")))]  # a ValueError that is no input check

    monkeypatch.setattr(_doctor, "checks", broken)
    assert main(["doctor"]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "int(\"not a number\")" in err
    assert "internal error: ValueError" in err and "bug in budgetctl" in err and "budgetctl doctor" in err


def test_which_errors_are_the_users() -> None:
    def checked() -> None:
        raise ValueError("threshold must be in (0, 1), got 2")

    assert is_user_error(PolicySpecError("unknown policy 'x'"))
    assert is_user_error(FileNotFoundError(2, "No such file", "pool.jsonl"))
    assert is_user_error(ImportError("needs 'openai': install it with `pip install 'budgetctl[openai]'`"))
    assert not is_user_error(KeyError("answer")) and not is_user_error(ImportError("cannot import name 'x'"))
    for make in (checked, lambda: int("x")):
        try:
            make()
        except ValueError as error:
            # Raised here, in a test file: not budgetctl's own check, so it counts as a bug.
            assert not is_user_error(error)


# -- did-you-mean ----------------------------------------------------------------------------------------------
def test_a_misspelt_command_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulte"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'simulte'; did you mean simulate?" in err and "usage: budgetctl" in err


def test_a_misspelt_flag_gets_a_suggestion_and_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ask", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--polcy", "ac", QUESTION])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: budgetctl ask" in err and "--polcy: did you mean --policy" in err
    with pytest.raises(SystemExit):
        main(["simulate", "--orderz=3"])
    err = capsys.readouterr().err
    assert "usage: budgetctl simulate" in err and "did you mean --orders?" in err


def test_a_policy_that_needs_an_extra_or_a_missing_directory_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--policy", "policies/nope", "--orders", "2"]) == 2
    err = capsys.readouterr().err
    assert "also looked for a trained-policy directory" in err and "nope" in err


# -- doctor ----------------------------------------------------------------------------------------------------
def test_doctor_reports_extras_torch_and_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    report = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert report["anyio"]["detail"] == importlib.metadata.version("anyio")
    assert report["python"]["ok"] and report["demo pool"]["ok"]
    for extra, _, distributions in _doctor.EXTRAS:
        line = report[f"extra {extra}"]
        try:
            versions = [importlib.metadata.version(d) for d in distributions]
        except importlib.metadata.PackageNotFoundError:
            assert not line["ok"] and f"pip install 'budgetctl[{extra}]'" in line["detail"]
        else:
            assert line["ok"] and all(v in line["detail"] for v in versions)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
    assert any(c["ok"] == shared.is_dir() for n, c in report.items() if n == "shared traces")
    assert main(["doctor"]) == 0
    assert "torch build" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n", "2.13.0+cpu, CPU build"),
        ("__version__ = '2.4.0'\ncuda: Optional[str] = '12.1'\n", "2.4.0, CUDA 12.1 build"),
        ("__version__ = '2.4.0'\ncuda = None\nhip = '6.0'\n", "2.4.0, ROCm 6.0 build"),
    ],
)
def test_torch_build_is_read_without_importing_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str, expected: str
) -> None:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "version.py").write_text("from typing import Optional\n" + lines)

    class Spec:
        submodule_search_locations = (str(tmp_path / "torch"),)

    monkeypatch.setattr("importlib.util.find_spec", lambda name: Spec() if name == "torch" else None)
    assert _doctor.torch_build() == expected


# -- ask -------------------------------------------------------------------------------------------------------
def _server(tmp_path_factory: pytest.TempPathFactory, ttft_ms: float) -> Any:
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from budgetctl.serve import ReplayServer, serve_in_thread

    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    samples = [{"answer": "42", "tokens": 5}] * 4
    path.write_text(json.dumps({"id": "q", "gold": "42", "question": QUESTION, "samples": samples}) + "\n")
    return serve_in_thread(ReplayServer(path, ttft_ms=ttft_ms, ms_per_token=0), startup_timeout=20)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A replay server whose answers take 5 s (so a 0.2 s deadline sees none)."""
    with _server(tmp_path_factory, 5000) as handle:
        yield handle


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A replay server that answers at once."""
    with _server(tmp_path_factory, 1) as handle:
        yield handle


def test_ask_says_why_no_sample_came_before_the_deadline(slow_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ask", "--base-url", slow_server.base_url, "--model", "replay", "--deadline", "0.2", QUESTION]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "answer:      None" in captured.out
    assert "no sample came back before the --deadline of 0.2 s" in captured.err and "longer --deadline" in captured.err


def test_ask_stops_at_once_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["ask", "--base-url", url, "--model", "m", "--json", "--concurrency", "2", QUESTION]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["stop_reason"] == "error" and report["failed"] <= 2  # no retrying of a refused connection
    assert f"{url}/chat/completions" in captured.err and "server is running" in captured.err


def test_ask_writes_id_gold_and_meta_into_a_trace_that_loads_as_a_pool(
    fast_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "ask.jsonl"
    argv = ["ask", "--base-url", fast_server.base_url, "--model", "replay", "--deadline", "30", "--trace", str(trace)]
    argv += ["--id", "q7", "--gold", "42", "--meta", "dataset=arith", "--meta", "difficulty=3", QUESTION]
    assert main(argv) == 0
    assert "answer:      42" in capsys.readouterr().out
    question = load_pool([str(trace)]).questions[0]
    assert (question.id, question.dataset, question.text) == ("q7", "arith", QUESTION)
    assert question.is_correct("42") and not question.is_correct("41")
    start = json.loads(trace.read_text().splitlines()[0])
    assert start["meta"]["difficulty"] == 3  # JSON values are read as JSON
    assert main([*argv[:-1], "--meta", "novalue", QUESTION]) == 2
    assert "--meta takes KEY=VALUE" in capsys.readouterr().err


def test_a_missing_extra_names_the_pip_command() -> None:
    from test_optional import run_python

    done = run_python(
        'lambda top: top != "openai"',
        """
import sys
from budgetctl.cli import main
sys.exit(main(["ask", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "q"]))
""",
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "pip install 'budgetctl[openai]'" in done.stderr
