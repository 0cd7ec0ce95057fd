"""Nothing a user owns is deleted or overwritten; nothing half-written or stale is left (issue 19, items 1-2).

Every test works inside its own ``tmp_path``: foreign files are planted there and checked after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gistgym import staging
from gistgym.errors import ConfigError, OutputDirError
from gistgym.scripts.cli import main

# --- the generic protocol --------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant_leftover(target: Path, kind: str = "partial", *, pid: int | None = None, host: str | None = None) -> Path:
    name = f".{target.name}.{kind}-{host or staging.owner_tag().rsplit('-', 1)[0]}-{pid or dead_pid()}-abcd_123"
    path = target.parent / name
    path.mkdir(parents=True)
    (path / "half-written").write_text("x")
    return path


@pytest.mark.parametrize("name", [".", "..", "", "../../x", "/tmp/abs", "a/b", ".hidden", " x", "x\0y"])
def test_a_name_must_be_one_plain_component(name: str) -> None:
    with pytest.raises(ConfigError, match=r"--name .* must be one plain folder name"):
        staging.check_name(name)


def test_plain_names_pass() -> None:
    for name in ("ddqn-g0.5", "run_1", "x"):
        assert staging.check_name(name) == name


def test_staging_names_carry_host_and_pid_and_parse_back(tmp_path: Path) -> None:
    target = tmp_path / "run.x"
    with staging.staged_dir(target) as staged:
        kind, host, pid = staging.parse_staging(staged.name, target.name) or ("", "", 0)
        assert (kind, pid) == ("partial", os.getpid()) and staged.name.startswith(f".run.x.partial-{host}-")
        assert staging.parse_staging(staged.name, "run") is None  # another target's name
        (staged / "f").write_text("done")
    assert (target / "f").read_text() == "done" and staging.stale_siblings(target) == []


def test_a_staged_folder_is_deleted_on_error_and_the_old_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("previous")
    with pytest.raises(RuntimeError), staging.staged_dir(target) as staged:
        (staged / "new").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old").read_text() == "previous"
    with staging.staged_dir(target) as staged:
        (staged / "new").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in target.iterdir()] == ["new"]


def test_sweep_removes_only_leftovers_of_dead_processes_on_this_host(tmp_path: Path) -> None:
    target = tmp_path / "out"
    dead = plant_leftover(target)
    dead_tmp = plant_leftover(target, "tmp")
    alive = plant_leftover(target, pid=os.getppid())
    remote = plant_leftover(target, host="another.host", pid=dead_pid())
    other = plant_leftover(tmp_path / "other")
    lines: list[str] = []
    assert staging.sweep_stale(target, log=lines.append) == sorted([dead, dead_tmp])
    assert len(lines) == 1 and "removed 2 leftover(s)" in lines[0] and dead.name in lines[0]
    assert not dead.exists() and not dead_tmp.exists() and alive.exists() and remote.exists() and other.exists()


def test_check_output_refuses_foreign_things_even_with_overwrite(tmp_path: Path) -> None:
    def ours(p: Path) -> bool:
        return (p / "marker").is_file()

    args: dict[str, Any] = {"is_ours": ours, "what": "a test output"}
    file = tmp_path / "file"
    file.write_text("mine")
    with pytest.raises(OutputDirError, match="exists and is a file"):
        staging.check_output(file, overwrite=True, **args)
    with pytest.raises(OutputDirError, match="is a file, so --out"):
        staging.check_output(file / "sub", overwrite=True, **args)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    with pytest.raises(OutputDirError, match="is not a test output; refusing to replace it"):
        staging.check_output(foreign, overwrite=True, **args)
    own = tmp_path / "own"
    own.mkdir()
    (own / "marker").write_text("")
    with pytest.raises(OutputDirError, match="pass --overwrite"):
        staging.check_output(own, overwrite=False, **args)
    assert staging.check_output(own, overwrite=True, **args) == own
    (tmp_path / "empty").mkdir()
    assert staging.check_output(tmp_path / "empty", overwrite=False, **args) == tmp_path / "empty"
    with pytest.raises(OutputDirError, match="exists and is a folder"):
        staging.check_output(own, overwrite=True, kind="file", **args)
    assert (foreign / "thesis.tex").read_text() == "keep" and file.read_text() == "mine"


# --- train ------------------------------------------------------------------------------------


def _train_argv(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--cache", str(cache), "--out", str(out), "--clip-len", "8", "--num-envs", "2",
        "--total-timesteps", "16", "--learning-starts", "8", "--batch-size", "4", "--buffer-size", "64",
        "--eval-every", "0", "--eval-videos", "1", "--checkpoint-every", "0", "--no-progress", *extra,
    ]  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_train_name_dot_with_overwrite_deletes_nothing(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    for name in (".", "..", "../../escaped", str(tmp_path / "abs")):
        assert main(_train_argv(tiny_cache, out, "--name", name, "--overwrite")) == 2
        assert "must be one plain folder name" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_train_overwrite_replaces_only_a_run(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("keep")
    assert main(_train_argv(tiny_cache, out, "--name", "notes", "--overwrite")) == 2
    err = _one_error_line(capsys)
    assert "notes: exists and is not a gistgym run" in err and "even with --overwrite" in err
    assert (out / "notes" / "todo.txt").read_text() == "keep"
    assert main(_train_argv(tiny_cache, out, "--name", "r")) == 0
    first = json.loads((out / "r" / "config.json").read_text())
    assert main(_train_argv(tiny_cache, out, "--name", "r")) == 2
    assert "pass --overwrite" in _one_error_line(capsys)
    assert main(_train_argv(tiny_cache, out, "--name", "r", "--overwrite", "--seed", "7")) == 0
    assert json.loads((out / "r" / "config.json").read_text())["train"]["seed"] == 7 != first["train"]["seed"]
    assert sorted(p.name for p in out.iterdir()) == ["notes", "r"]


def test_train_out_that_is_a_file_is_one_line(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "file"
    out.write_text("keep")
    assert main(_train_argv(tiny_cache, out)) == 2
    assert "file: exists and is a file" in _one_error_line(capsys)
    assert out.read_text() == "keep"


def test_train_removes_a_dead_runs_partial_folder_and_says_so(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    leftover = plant_leftover(out / "r")
    assert main(_train_argv(tiny_cache, out, "--name", "r")) == 0
    err = capsys.readouterr().err
    assert f"removed 1 leftover(s) of interrupted runs beside {out / 'r'}: {leftover.name}" in err
    assert sorted(p.name for p in out.iterdir()) == ["r"]


# --- export -----------------------------------------------------------------------------------


def test_export_never_replaces_a_foreign_file(
    keyframe_run: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = keyframe_run
    precious = tmp_path / "paper.pdf"
    precious.write_bytes(b"%PDF precious")
    for extra in ([], ["--overwrite"]):
        assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(precious), *extra]) == 2
        assert "paper.pdf: exists and is not an exported gistgym policy" in _one_error_line(capsys)
    assert precious.read_bytes() == b"%PDF precious" and not (tmp_path / "paper.pdf.json").exists()
    # a foreign FILE.json would be replaced by the sidecar: refused as well
    (tmp_path / "p.onnx.json").write_text('{"mine": true}')
    argv = ["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "p.onnx"), "--overwrite"]
    assert main(argv) == 2
    assert "p.onnx.json: exists and is not" in _one_error_line(capsys)
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "exists and is a folder" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx.json", "paper.pdf"]


def test_export_replaces_its_own_file_only_with_overwrite(
    keyframe_run: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = keyframe_run
    out = tmp_path / "policy.pt"
    import hashlib

    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    assert "pass --overwrite" in _one_error_line(capsys)
    out.write_bytes(b"stale")
    assert main(["export", "--run", str(run), "--out", str(out), "--overwrite"]) == 0
    sidecar = json.loads((tmp_path / "policy.pt.json").read_text())
    assert sidecar["file_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.pt", "policy.pt.json"]


# --- compare ----------------------------------------------------------------------------------


def test_compare_checks_out_before_any_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "results"
    file.write_text("keep")
    # the cache does not exist: if --out were checked after the evaluation the error would name the cache
    assert main(["compare", "--cache", str(tmp_path / "missing.h5"), "--out", str(file)]) == 2
    assert "results: exists and is a file" in _one_error_line(capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("keep")
    assert main(["compare", "--cache", str(tmp_path / "missing.h5"), "--out", str(foreign), "--overwrite"]) == 2
    assert "is not a gistgym comparison" in _one_error_line(capsys)
    assert file.read_text() == "keep" and (foreign / "data.csv").read_text() == "keep"


def test_compare_replaces_its_own_output_only_with_overwrite(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--cache", str(tiny_cache), "--taus", "3", "--max-videos", "1", "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    capsys.readouterr()
    assert json.loads((out / "results.json").read_text())["format"] == "gistgym-compare"
    assert main([*argv, "--json"]) == 2
    assert "pass --overwrite" in _one_error_line(capsys)
    assert main([*argv, "--json", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]


# --- detect -----------------------------------------------------------------------------------


def _detect_argv(tiny_cache: Path, tiny_bench: Path, out: Path, *extra: str) -> list[str]:
    video = tiny_bench / "val_0000" / "video.mp4"
    weights = tiny_cache.parent / "detector.pt"
    return ["detect", str(video), "--policy", "fixed:3", "--weights", str(weights), "--out", str(out),
            "--annotate", "none", "--no-progress", "--json", *extra]  # fmt: skip


def test_detect_replaces_its_own_output_only_with_overwrite(
    tiny_cache: Path, tiny_bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "det"
    assert main(_detect_argv(tiny_cache, tiny_bench, out)) == 0
    capsys.readouterr()
    assert main(_detect_argv(tiny_cache, tiny_bench, out)) == 2
    assert "pass --overwrite" in _one_error_line(capsys)
    leftover = plant_leftover(out, "tmp")
    assert main(_detect_argv(tiny_cache, tiny_bench, out, "--overwrite")) == 0
    assert leftover.name in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]
    file = tmp_path / "file"
    file.write_text("keep")
    assert main(_detect_argv(tiny_cache, tiny_bench, file, "--overwrite")) == 2
    assert "exists and is a file" in _one_error_line(capsys)


# --- SIGKILL, then re-run ---------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gistgym.scripts.cli", *args]


def _kill_at_stall(cmd: list[str], point: str, timeout: float = 180.0) -> subprocess.Popen[str]:
    """Start ``cmd`` with the stall hook at ``point``, wait until it stalls there, SIGKILL it."""
    env = {**os.environ, staging.STALL_ENV: point, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    for line in proc.stderr:
        if f"gistgym-test-stall {point}" in line:
            break
        assert time.monotonic() < deadline, "the command never reached the stall point"
    else:
        pytest.fail(f"exited ({proc.wait()}) before the stall point {point}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return proc


def _staging_left(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_sigkill_during_train_then_rerun(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _kill_at_stall(_cli(*_train_argv(tiny_cache, out, "--name", "r")[0:]), "staged")
    assert len(_staging_left(out)) == 1  # what SIGKILL leaves
    done = subprocess.run(_cli(*_train_argv(tiny_cache, out, "--name", "r")), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "removed 1 leftover(s)" in done.stderr
    assert _staging_left(out) == [] and (out / "r" / "config.json").is_file()


def test_sigkill_during_detect_then_rerun(tiny_cache: Path, tiny_bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "det"
    _kill_at_stall(_cli(*_detect_argv(tiny_cache, tiny_bench, out)), "staged")
    assert len(_staging_left(tmp_path)) == 1
    done = subprocess.run(_cli(*_detect_argv(tiny_cache, tiny_bench, out)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _staging_left(tmp_path) == [] and (out / "summary.json").is_file()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the workers")
def test_sigkill_during_a_two_worker_build_kills_the_workers_then_resumes(
    tiny_bench: Path, tiny_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "c.h5"
    weights = tiny_cache.parent / "detector.pt"
    cmd = _cli("cache", "build", "--videos", str(tiny_bench), "--out", str(out), "--weights", str(weights),
               "--sections", "interleave", "--workers", "2", "--no-latency", "--no-progress")  # fmt: skip
    env = {**os.environ, staging.STALL_ENV: "shard-done", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "gistgym-test-stall shard-done" in line:
            break
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 1.0
    while any(staging.pid_alive(w) for w in workers) and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    survivors = [w for w in workers if staging.pid_alive(w)]
    assert time.monotonic() <= deadline and not survivors, f"workers outlived their parent: {survivors}"
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr and "no longer running" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


def test_a_failed_build_says_its_shards_are_kept_and_fresh_drops_them(
    tiny_bench: Path, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    videos = tmp_path / "videos"
    shutil.copytree(tiny_bench, videos)
    (videos / "val_0001" / "video.mp4").write_bytes(b"broken")
    out = tmp_path / "c.h5"
    weights = tiny_cache.parent / "detector.pt"
    argv = ["cache", "build", "--videos", str(videos), "--out", str(out), "--weights", str(weights),
            "--sections", "interleave", "--no-latency", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = _one_error_line(capsys)
    assert "val_0001" in err and "kept in" in err and "c.h5.parts" in err and "--fresh" in err
    assert (tmp_path / "c.h5.parts").is_dir()
    shutil.copy(tiny_bench / "val_0001" / "video.mp4", videos / "val_0001" / "video.mp4")
    assert main([*argv, "--fresh"]) == 0
    assert "0 reused" in capsys.readouterr().out
    assert not (tmp_path / "c.h5.parts").exists() and out.is_file()
