"""Output files: no input overwritten, no existing file replaced unasked, nothing half-written, checks before work."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import budgetctl.cli._simulate as simulate_cli
from budgetctl._files import (
    OutputError,
    atomic_path,
    atomic_write,
    check_output,
    check_output_directory,
    umask,
)
from budgetctl.cli import main

POOL_LINES = [
    {"id": f"q{i}", "gold": "a", "samples": [{"answer": a, "tokens": 5} for a in ("a", "b", "a")]} for i in range(4)
]


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in POOL_LINES))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"budgetctl {command}: error: ") and err.count("\n") == 1, err
    return err


# -- never overwrite an input -------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "dotted", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["simulate", "evaluate"])
def test_an_input_is_never_overwritten_even_with_force(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], alias: str, command: str
) -> None:
    target = {"same": pool, "dotted": tmp_path / "." / ".." / tmp_path.name / "pool.jsonl"}.get(alias)
    if alias == "symlink":
        target = tmp_path / "link.jsonl"
        target.symlink_to(pool)
    elif alias == "hardlink":
        target = tmp_path / "hard.jsonl"
        os.link(pool, target)
    before = pool.read_bytes()
    argv = [command, str(pool), "--json", str(target), "--force", "--orders", "2", "--jobs", "1"]
    if command == "evaluate":
        argv += ["--policy", "ac:threshold=0.9"]
    assert main(argv) == 2
    assert "is an input of this command" in _one_line_error(capsys, command)
    assert pool.read_bytes() == before


def test_train_refuses_an_output_directory_holding_an_input(pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(pool), "-o", str(pool.parent), "--force"]) == 2
    assert "is or holds an input" in _one_line_error(capsys, "train")


# -- refuse existing outputs unless --force --------------------------------------------------------------


def test_existing_outputs_are_refused_unless_forced(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    out.write_text("keep me")
    argv = ["simulate", str(pool), "--policy", "fixed:n=2", "--orders", "2", "--jobs", "1", "--json", str(out)]
    assert main(argv) == 2
    err = _one_line_error(capsys, "simulate")
    assert "--json" in err and "exists; pass --force" in err
    assert out.read_text() == "keep me"
    assert main([*argv, "--force"]) == 0
    assert json.loads(out.read_text())["policies"]
    capsys.readouterr()
    report = tmp_path / "report.json"
    report.write_text("keep")
    assert main(["evaluate", str(pool), "--policy", "ac:threshold=0.9", "--orders", "2", "--json", str(report)]) == 2
    assert "pass --force" in _one_line_error(capsys, "evaluate") and report.read_text() == "keep"


def test_train_refuses_an_existing_output_directory(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "policy"
    out.mkdir()
    (out / "policy.json").write_text("{}")
    assert main(["train", str(pool), "-o", str(out)]) == 2
    assert "-o" in _one_line_error(capsys, "train") and (out / "policy.json").read_text() == "{}"


# -- atomic writes ---------------------------------------------------------------------------------------


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as partial:
        Path(partial).write_text("half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]  # no temporary left
    atomic_write(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.json"]


def test_atomic_path_keeps_the_extension_for_writers_that_need_it(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "frontier.png") as partial:
        assert partial.endswith(".png") and Path(partial).parent == tmp_path
        Path(partial).write_bytes(b"png")
    assert (tmp_path / "frontier.png").read_bytes() == b"png"


def test_atomic_writes_keep_permissions(tmp_path: Path) -> None:
    # A new file gets what the umask gives any new file (not the temporary file's 0600) ...
    fresh = tmp_path / "new.json"
    atomic_write(fresh, "{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask()
    # ... and a replaced file keeps its own.
    shared = tmp_path / "shared.json"
    shared.write_text("{}")
    shared.chmod(0o640)
    atomic_write(shared, "[]")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640 and shared.read_text() == "[]"


def test_check_output_refuses_directories_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path, force=True)
    with pytest.raises(OutputError, match=r"--plot .*nowhere.*does not exist"):
        check_output(tmp_path / "nowhere" / "x.png", flag="--plot")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        (tmp_path / "file").write_text("")
        check_output_directory(tmp_path / "file", force=True)


# -- argument validation before any work -----------------------------------------------------------------


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the simulation ran before the arguments were checked")

    monkeypatch.setattr(simulate_cli, "simulate", refuse)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plot", "missing-folder/frontier.png"], "--plot missing-folder/frontier.png: folder"),
        (["--deadline", "-1", "--ttft-ms", "10"], "--deadline must be a positive number of seconds, got -1.0"),
        (["--deadline", "nan", "--ttft-ms", "10"], "--deadline must be a positive number"),
        (["--orders", "0"], "--orders must be >= 1"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
        (["--ms-per-token", "-2"], "--ms-per-token must be a number >= 0"),
        (["--json", "same.json", "--plot", "same.json"], "--plot and --json name the same file"),
    ],
)
def test_bad_arguments_fail_before_the_simulation(
    pool: Path,
    capsys: pytest.CaptureFixture[str],
    no_simulation: None,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(pool.parent)
    assert main(["simulate", str(pool), *extra]) == 2
    assert message in _one_line_error(capsys, "simulate")


def test_a_directory_as_a_pool_is_one_line_for_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["simulate", str(tmp_path)],
        ["evaluate", str(tmp_path), "--policy", "ac:threshold=0.9"],
        ["train", str(tmp_path), "-o", str(tmp_path / "out")],
        ["serve", str(tmp_path)],
    ):
        assert main(argv) == 2
        assert "is a directory, not a pool or trace file" in _one_line_error(capsys, argv[0])
