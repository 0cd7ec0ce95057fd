"""Sweeps: the sweep file, runs here and as Ray tasks (same results), retries, resume, Ctrl-C, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gistgym.agents.algorithms import load_run
from gistgym.agents.runs import CONFIG_FILE, EVAL_FILE, find_runs
from gistgym.agents.sweep import (
    KILL_ONCE_ENV,
    SWEEP_FILE,
    WORKER_DIR,
    CacheSpec,
    SweepOptions,
    _materialise_cache,
    cache_fingerprint,
    pack_run,
    unpack_run,
)
from gistgym.agents.sweep_file import sweep_jobs_from_file
from gistgym.agents.train import TrainConfig, train
from gistgym.cluster import check_reachable
from gistgym.errors import ConfigError, OutputDirError, RunError
from gistgym.scripts.agent_commands import TRAIN_NUMBERS
from gistgym.scripts.cli import main

TINY = {
    "clip_len": 8,
    "num_envs": 4,
    "total_timesteps": 48,
    "learning_starts": 16,
    "buffer_size": 100,
    "batch_size": 8,
    "eval_every": 0,
    "eval_videos": 1,
    "checkpoint_every": 0,
}


def tiny(cache: Path, out: Path, **overrides: Any) -> TrainConfig:
    return TrainConfig.of(cache=str(cache), out=str(out), progress=False, **{**TINY, **overrides})  # type: ignore[arg-type]


def numbers(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json without what differs by where and when a run trained, and eval.json."""
    config = json.loads((run / CONFIG_FILE).read_text())
    for key in ("train_seconds", "command"):
        config.pop(key)
    for key in ("out", "progress"):
        config["train"].pop(key)
    return config, json.loads((run / EVAL_FILE).read_text())


def staging_leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in f.rglob(".*") if ".partial-" in p.name or ".tmp-" in p.name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the sweep file ---------------------------------------------------------------------------


def test_sweep_file_lists_settings_by_seeds_by_envs(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "sweep.yaml",
        f"""
cache: {tmp_path / "c.h5"}
out: {tmp_path / "runs"}
seeds: 2
seed: 5
train: {{reward: matched, total_timesteps: 1000}}
grid:
  env: [gistgym/Interleave-v0, gistgym/Keyframe-v0]
  gamma: [0.5, 2]
  discount: [0.9, 0.97]
""",
    )
    jobs, out = sweep_jobs_from_file(spec, numbers=TRAIN_NUMBERS)
    assert out == tmp_path / "runs" and len(jobs) == 2 * 2 * 2 * 2
    names = [str(j.target.relative_to(out)) for j in jobs]
    assert names[:4] == [
        "Interleave-v0/ddqn-g0.5-discount0.9-s5",
        "Interleave-v0/ddqn-g0.5-discount0.9-s6",
        "Interleave-v0/ddqn-g0.5-discount0.97-s5",
        "Interleave-v0/ddqn-g0.5-discount0.97-s6",
    ]
    assert names[-1] == "Keyframe-v0/ddqn-g2-discount0.97-s6"
    last = jobs[-1].config
    assert (last.env, last.gamma, last.discount, last.seed, last.seeds) == ("gistgym/Keyframe-v0", 2.0, 0.97, 6, 2)
    assert (last.reward, last.total_timesteps) == ("matched", 1000)
    assert jobs[-1].setting == "ddqn-g2-discount0.97"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cache: c.h5\ngrid: {gamma: [1]}\nworkers: 2\n", "workers: unknown key"),
        ("cache: c.h5\ngrid: {}\n", "grid: empty"),
        ("cache: c.h5\n", "grid: empty"),
        ("cache: c.h5\ngrid: {gamma: []}\n", "grid.gamma: expected a non-empty list"),
        ("cache: c.h5\ngrid: {gamma: 1}\n", "grid.gamma: expected a non-empty list"),
        ("cache: c.h5\ngrid: {gamm: [1]}\n", "grid.gamm: not a gistgym train option"),
        ("cache: c.h5\ngrid: {gamma: [1]}\ntrain: {learning_rate: -1}\n", "train.learning_rate: must be > 0, got -1"),
        ("cache: c.h5\ngrid: {gamma: [1, .nan]}\n", "grid.gamma: expected a finite number"),
        ("cache: c.h5\ngrid: {gamma: [1]}\ntrain: {cues: 1}\n", "train.cues: expected true or false"),
        ("cache: c.h5\ngrid: {gamma: [1]}\ntrain: {total_timesteps: 1.5}\n", "expected an integer"),
        ("cache: c.h5\ngrid: {seed: [1, 2]}\n", "grid.seed: set at the top"),
        ("cache: c.h5\ngrid: {gamma: [1]}\nseeds: 0\n", "seeds: must be >= 1, got 0"),
        ("grid: {gamma: [1]}\n", "cache: required"),
        ("cache: c.h5\ngrid: {gamma: [1]}\ntrain: {gamma: 2}\n", "grid.gamma: also set under train"),
        ("cache: c.h5\ngrid: {algo: [sac]}\n", "--algo 'sac'"),
        ("- not a mapping\n", "a sweep file is a mapping"),
        ("cache: [unclosed\n", "not valid YAML"),
    ],
)
def test_sweep_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    spec = write(tmp_path / "sweep.yaml", text)
    with pytest.raises(ConfigError, match=r"sweep\.yaml") as info:
        sweep_jobs_from_file(spec, numbers=TRAIN_NUMBERS)
    assert message in str(info.value)


def test_cli_refuses_a_bad_sweep_file_in_one_line_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path / "sweep.yaml", f"cache: c.h5\nout: {tmp_path / 'runs'}\ngrid: {{}}\n")
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid: empty" in err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the sweep file" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--max-retries", "-1"]) == 2
    assert "--max-retries must be >= 0, got -1" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--ship-cache"]) == 2
    assert "--ship-cache is for Ray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_cluster_is_one_line_within_seconds(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "")  # recorded: whatever happens here, the teardown restores it
    monkeypatch.delenv("RAY_AUTH_MODE")
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match="no Ray cluster answers"):
        check_reachable(address)
    started = time.perf_counter()
    code = main(
        ["train", "--cache", str(tiny_cache), "--out", str(tmp_path / "runs"), "--seeds", "2", "--ray", address]
    )
    assert code == 2 and time.perf_counter() - started < 30  # ray.init itself would retry for minutes
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--ray {address}: no Ray cluster answers" in err
    assert not list((tmp_path / "runs").glob("ddqn*"))  # nothing trained
    assert main(["train", "--cache", str(tiny_cache), "--ray", "127.0.0.1:http"]) == 2
    assert "the port must be a number" in capsys.readouterr().err
    assert "RAY_AUTH_MODE" not in os.environ  # an address that was never reached changes nothing


# --- here -------------------------------------------------------------------------------------


def test_local_sweep_writes_sweep_json_and_resume_skips_complete_runs(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    config = tiny(tiny_cache, out, gamma_sweep=True, gammas=(0.5, 2.0))
    runs = train(config, log=lambda _: None)
    assert [p.name for p in runs] == ["ddqn-g0.5", "ddqn-g2"]
    summary = json.loads((out / SWEEP_FILE).read_text())
    assert summary["counts"]["done"] == 2 and [r["status"] for r in summary["runs"]] == ["done", "done"]
    assert all(r["seconds"] > 0 and r["node"] for r in summary["runs"])
    with pytest.raises(OutputDirError, match=r"ddqn-g0\.5"):  # neither --resume nor --overwrite
        train(config, log=lambda _: None)
    kept = (out / "ddqn-g0.5" / CONFIG_FILE).stat().st_mtime_ns
    (out / "ddqn-g2" / CONFIG_FILE).unlink()  # not a complete run any more: left alone
    with pytest.raises(OutputDirError, match="ddqn-g2"):
        train(config, log=lambda _: None, cluster=SweepOptions(resume=True, progress=False))
    import shutil

    shutil.rmtree(out / "ddqn-g2")
    notes: list[str] = []
    train(config, log=notes.append, cluster=SweepOptions(resume=True, progress=False))
    assert notes == ["resume: 1 of 2 runs are complete already, skipping them"]
    assert (out / "ddqn-g0.5" / CONFIG_FILE).stat().st_mtime_ns == kept
    summary = json.loads((out / SWEEP_FILE).read_text())
    assert [r["status"] for r in summary["runs"]] == ["skipped", "done"]
    assert [p.name for p in find_runs(out)] == ["ddqn-g0.5", "ddqn-g2"]  # sweep.json is not a run


def test_pack_and_unpack_round_trip_and_refuse_escapes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "tb" / "events").write_bytes(b"\x00\x01")
    into = tmp_path / "into"
    into.mkdir()
    unpack_run(pack_run(run), into)
    assert (into / "config.json").read_text() == "{}" and (into / "tb" / "events").read_bytes() == b"\x00\x01"
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(RunError, match=r"unexpected entry '\.\./escape'"):
        unpack_run(buffer.getvalue(), into)
    assert not (tmp_path / "escape").exists()


def test_a_worker_refuses_a_cache_it_cannot_read_or_that_differs(
    tiny_cache: Path, keyframe_cache: Path, tmp_path: Path
) -> None:
    fingerprint = cache_fingerprint(tiny_cache)
    assert fingerprint == cache_fingerprint(tiny_cache) and fingerprint != cache_fingerprint(keyframe_cache)
    assert _materialise_cache(CacheSpec(str(tiny_cache), fingerprint), None, tmp_path) == tiny_cache
    with pytest.raises(ConfigError, match=r"cannot read it .*--ship-cache"):
        _materialise_cache(CacheSpec(str(tmp_path / "nowhere.h5"), fingerprint), None, tmp_path)
    with pytest.raises(ConfigError, match="reads a different cache there"):
        _materialise_cache(CacheSpec(str(keyframe_cache), fingerprint), None, tmp_path)


# --- on Ray -----------------------------------------------------------------------------------

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'gistgym[ray]'); the Ray path is untested")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2-CPU local Ray whose workers carry the kill-once test hook, disarmed (its marker exists)."""
    marker = tmp_path_factory.mktemp("kill") / "killed-once"
    marker.touch()
    os.environ[KILL_ONCE_ENV] = str(marker)  # the workers inherit the environment of ray.init
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield marker
    finally:
        ray.shutdown()
        os.environ.pop(KILL_ONCE_ENV, None)


@pytest.fixture(scope="module")
def sequential(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two gammas x two seeds trained here, one after another."""
    out = tmp_path_factory.mktemp("sequential")
    train(tiny(tiny_cache, out, gamma_sweep=True, gammas=(0.5, 2.0), seeds=2), log=lambda _: None)
    return out


def worker_leftovers() -> list[Path]:
    import tempfile

    root = Path(tempfile.gettempdir()) / WORKER_DIR
    return (
        [p for p in root.iterdir() if p.name.startswith(f"{socket.gethostname()}-{os.getpid()}-")]
        if root.is_dir()
        else []
    )


@pytest.mark.parametrize("ship_cache", [False, True], ids=["shared-path", "object-store"])
def test_ray_sweep_equals_the_sequential_one(
    local_ray: Path, sequential: Path, tiny_cache: Path, tmp_path: Path, ship_cache: bool
) -> None:
    out = tmp_path / "runs"
    cluster = SweepOptions(ray="local", ship_cache=ship_cache, progress=False)
    runs = train(tiny(tiny_cache, out, gamma_sweep=True, gammas=(0.5, 2.0), seeds=2), cluster=cluster)
    names = ["ddqn-g0.5-s0", "ddqn-g0.5-s1", "ddqn-g2-s0", "ddqn-g2-s1"]
    assert [p.name for p in runs] == names == [p.name for p in find_runs(sequential)]
    for name in names:
        assert numbers(out / name) == numbers(sequential / name), name
        assert json.loads((out / name / CONFIG_FILE).read_text())["cache_path"] == str(tiny_cache.resolve())
        load_run(out / name, cache=tiny_cache)  # the model loads, the identity matches
    summary = json.loads((out / SWEEP_FILE).read_text())
    assert summary["engine"] == "ray:local" and summary["ship_cache"] is ship_cache
    assert [r["status"] for r in summary["runs"]] == ["done"] * 4 and all(r["node"] for r in summary["runs"])
    assert not staging_leftovers(out) and not worker_leftovers()


def test_a_worker_killed_mid_run_is_retried_and_leaves_nothing_partial(
    local_ray: Path, sequential: Path, tiny_cache: Path, tmp_path: Path
) -> None:
    local_ray.unlink()  # arm the hook: the first task SIGKILLs its worker once its partial folder exists
    out = tmp_path / "runs"
    cluster = SweepOptions(ray="local", max_retries=2, progress=False)
    train(tiny(tiny_cache, out, gamma_sweep=True, gammas=(0.5, 2.0), seeds=2), cluster=cluster)
    assert local_ray.exists()  # a worker did die
    names = [p.name for p in find_runs(out)]
    assert names == [p.name for p in find_runs(sequential)]
    for name in names:
        assert numbers(out / name) == numbers(sequential / name), name
    assert not staging_leftovers(out) and not worker_leftovers()


def test_without_retries_a_killed_run_fails_alone_and_the_others_finish(
    local_ray: Path, tiny_cache: Path, tmp_path: Path
) -> None:
    local_ray.unlink(missing_ok=True)
    out = tmp_path / "runs"
    cluster = SweepOptions(ray="local", max_retries=0, progress=False)
    with pytest.raises(RunError, match="1 of 2 runs failed"):
        train(tiny(tiny_cache, out, seeds=2), cluster=cluster)
    summary = json.loads((out / SWEEP_FILE).read_text())
    assert sorted(r["status"] for r in summary["runs"]) == ["done", "failed"]
    failed = next(r for r in summary["runs"] if r["status"] == "failed")
    assert failed["error"] and not (out / failed["name"]).exists()
    assert not staging_leftovers(out) and not worker_leftovers()
    # --resume trains only what is missing
    train(tiny(tiny_cache, out, seeds=2), cluster=replace(cluster, resume=True))
    assert [r["status"] for r in json.loads((out / SWEEP_FILE).read_text())["runs"]].count("skipped") == 1
    assert len(find_runs(out)) == 2


def test_a_sweep_file_runs_on_ray_and_compare_reads_its_runs(
    local_ray: Path, tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    spec = write(
        tmp_path / "sweep.yaml",
        json.dumps({"cache": str(tiny_cache), "out": str(out), "seeds": 1, "train": TINY, "grid": {"gamma": [1, 3]}}),
    )
    assert main(["sweep", str(spec), "--ray", "--no-progress"]) == 0
    assert "sweep: 2 trained, 0 skipped" in capsys.readouterr().out
    assert [p.name for p in find_runs(out)] == ["ddqn-g1", "ddqn-g3"]
    cmp_out = tmp_path / "compare"
    code = main(
        ["compare", "--cache", str(tiny_cache), "--runs", str(out), "--out", str(cmp_out), "--split", "val",
         "--taus", "1", "--no-progress"]
    )  # fmt: skip
    results = (cmp_out / "results.json").read_text()
    assert code == 0 and '"ddqn-g1"' in results and '"ddqn-g3"' in results


def test_ctrl_c_cancels_the_sweep_and_leaves_no_partial_folder(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ONCE_ENV, None)
    tiny_args = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, "total_timesteps": 40_000}.items()]
    cmd = [sys.executable, "-m", "gistgym.scripts.cli", "train", "--cache", str(tiny_cache), "--out", str(out),
           "--seeds", "4", *tiny_args, "--ray", "--workers", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / SWEEP_FILE).exists():
        time.sleep(0.2)
    time.sleep(3)  # the tasks are training
    proc.send_signal(signal.SIGINT)
    try:  # Ray's workers run at a lower priority: on a machine busy with other jobs, cancelling takes minutes
        _, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 130, err
    assert "interrupted" in err.strip().splitlines()[-1]
    summary = json.loads((out / SWEEP_FILE).read_text())
    statuses = [r["status"] for r in summary["runs"]]
    assert set(statuses) <= {"done", "cancelled"} and "cancelled" in statuses, summary
    done = sorted(r["name"] for r in summary["runs"] if r["status"] == "done")
    assert [p.name for p in find_runs(out)] == done  # a folder named like a run is a complete one
    assert not staging_leftovers(out)
    import tempfile

    assert not list((Path(tempfile.gettempdir()) / WORKER_DIR).glob(f"{socket.gethostname()}-{proc.pid}-*"))


def test_joining_a_cluster_sends_the_token_ray_start_wrote(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gistgym import cluster

    monkeypatch.setattr(cluster, "AUTH_TOKEN_FILE", tmp_path / "auth_token")
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so the teardown restores what was there before
        monkeypatch.delenv(name)
    cluster.use_auth_token()
    assert "RAY_AUTH_MODE" not in os.environ  # no token anywhere: Ray's default
    (tmp_path / "auth_token").write_text("x" * 32)
    cluster.use_auth_token()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster.use_auth_token()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # the user's choice stands
