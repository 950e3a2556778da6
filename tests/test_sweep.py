"""ppo sweep: grid parsing and its errors, a sweep end to end, resume, a failing job, and the Ray path on real
local Ray clusters (one started in-process, one by `ray start --head` in a subprocess)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ppo_cli.cli import cli
from ppo_cli.diagnostics import TIMING_COLUMNS
from tests.conftest import interrupt_at_update

ROOT = Path(__file__).parent.parent
POINT = "tests.fake_envs:PointEnv"
TINY = ["--total-steps", "1024", "--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4",
        "--update-epochs", "2", "--hidden-sizes", "16,16"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def text(result) -> str:
    return " ".join(result.output.split())


def progress(seed_dir: Path) -> pd.DataFrame:
    return pd.read_csv(seed_dir / "progress.csv").drop(columns=list(TIMING_COLUMNS))


@pytest.mark.parametrize("args, message", [
    (["--grid", "target-kll=0.01,0.02"], "'target-kll' is not a `ppo train` option; did you mean target_kl?"),
    (["--grid", "lr=1e-3,abc"], "'abc' for --lr: 'abc' is not a valid float"),
    (["--grid", "lr="], "--lr has no values; give them as lr=V1,V2,..."),
    (["--grid", "lr"], "'lr' is not NAME=V1,V2,..."),
    (["--grid", "lr=1e-3,0.001"], "--lr lists a value twice"),
    (["--grid", "lr=1e-3,-1"], "grid point lr=-1 on tests.fake_envs:PointEnv: must be a positive number, got -1.0"),
    (["--grid", "update_epochs=1,2"], "--update-epochs is both a fixed option and a grid axis"),
    (["--grid", "lr=1e-3", "--num-steps", "255"], "--num-minibatches 4 does not divide the batch size 255"),
    (["--grid", "lr=1e-3", "--lr", "1e-4"], "--lr is both a fixed option and a grid axis"),
    ([], "a sweep needs a grid: --grid NAME=V1,V2,..."),
    (["--grid", "update=fused,turbo"], "'turbo' is not one of 'auto', 'fused', 'autograd'"),
    (["--grid", "stagger_resets=false,true"], "grid point stagger_resets=true: --stagger-resets cuts first episodes "
                                              "within the time limit, and tests.fake_envs:PointEnv declares none"),
])
def test_grid_mistakes_are_one_error_and_start_nothing(tmp_path, args, message):
    result = invoke("sweep", POINT, *TINY, *args, "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert message in text(result), result.output
    assert "Traceback" not in result.output and not (tmp_path / "sweeps").exists()


def test_a_sweep_end_to_end_trains_every_point_and_seed_and_ranks_them(tmp_path):
    result = invoke("sweep", POINT, "--grid", "lr=1e-3,3e-2", "--grid", "clip_coef=0.2", "--seeds", "2", *TINY,
                    "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "sweeps" / "sweep"
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["grid"] == [["lr", ["1e-3", "3e-2"]], ["clip_coef", ["0.2"]]] and record["seeds"] == [0, 1]
    assert record["fixed"]["total_steps"] == 1024
    for point in ("lr=1e-3,clip_coef=0.2", "lr=3e-2,clip_coef=0.2"):
        run = sweep / "tests.fake_envs_PointEnv" / point
        assert json.loads((run / "run.json").read_text())["seeds"] == [0, 1]
        for seed in (0, 1):
            config = json.loads((run / f"seed_{seed}" / "config.json").read_text())
            assert config["seed"] == seed and config["lr"] == float(point.split(",")[0][3:])
            assert len(progress(run / f"seed_{seed}")) == 4
    ranking = pd.read_csv(sweep / "sweep.csv")
    assert sorted(ranking["point"]) == ["lr=1e-3,clip_coef=0.2", "lr=3e-2,clip_coef=0.2"]
    assert list(ranking["rank"]) == [1, 2] and ranking["iqm"].is_monotonic_decreasing
    assert (ranking["seeds"] == 2).all() and (sweep / "sweep.png").stat().st_size > 10_000
    assert "points by final training return IQM" in text(result)
    assert invoke("diagnose", sweep / "tests.fake_envs_PointEnv" / "lr=1e-3,clip_coef=0.2").exit_code == 0


def test_sweep_eval_evaluates_each_final_checkpoint_once_and_again_where_its_eval_json_is_not_its_own(tmp_path):
    args = [POINT, "--grid", "lr=1e-3,3e-2", "--seeds", "2", *TINY, "--eval", "--episodes", "2", "--quiet"]
    first = invoke("sweep", *args, "--out", tmp_path)
    assert first.exit_code == 0, first.output
    assert "evaluated 4 checkpoint(s), 2 episodes each" in text(first)
    sweep = tmp_path / "sweeps" / "sweep"
    ranking = pd.read_csv(sweep / "sweep.csv")
    assert (ranking["by"] == "eval").all() and (ranking["seeds"] == 2).all() and ranking["iqm"].notna().all()
    seed_dir = sweep / "tests.fake_envs_PointEnv" / "lr=1e-3" / "seed_0"
    again = invoke("sweep", "--resume", sweep, "--trust-env", "--eval", "--quiet")
    assert again.exit_code == 0 and "evaluated 0 checkpoint(s)" in text(again), again.output
    (seed_dir / "eval.json").write_text(json.dumps(  # as `ppo eval --best` wrote it before best_eval.json
        {"checkpoint": str(seed_dir / "best.pt"), "global_step": 256, "mean": 1e9, "episodes": 2}))
    third = invoke("sweep", "--resume", sweep, "--trust-env", "--eval", "--quiet")
    assert third.exit_code == 0 and "evaluated 1 checkpoint(s)" in text(third), third.output
    redone = json.loads((seed_dir / "eval.json").read_text())
    assert Path(redone["checkpoint"]).name == "checkpoint.pt" and redone["mean"] < 1e9
    assert pd.read_csv(sweep / "sweep.csv")["iqm"].max() < 1e9
    more = invoke("sweep", "--resume", sweep, "--trust-env", "--eval", "--episodes", "3", "--quiet")
    assert more.exit_code == 0 and "evaluated 4 checkpoint(s), 3 episodes each" in text(more), more.output
    assert json.loads((seed_dir / "eval.json").read_text())["episodes"] == 3


def test_a_spec_file_and_a_second_sweep_name(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'envs = ["{POINT}"]\nseeds = 1\n[grid]\nlr = [1e-3, 3e-3]\n'
                    '[options]\ntotal_steps = 512\nnum_envs = 1\nnum_steps = 256\nnum_minibatches = 4\n'
                    'update_epochs = 1\nhidden_sizes = [8]\n')
    for name, display in (("sweep", "--quiet"), ("sweep-2", "--jobs=2")):  # the live display, the second time
        result = invoke("sweep", "--spec", spec, "--out", tmp_path, display)
        assert result.exit_code == 0, result.output
        assert (tmp_path / "sweeps" / name / "tests.fake_envs_PointEnv" / "lr=0.003" / "seed_0").is_dir()
    assert json.loads((tmp_path / "sweeps" / "sweep" / "tests.fake_envs_PointEnv" / "lr=0.001" / "seed_0" /
                       "config.json").read_text())["hidden_sizes"] == [8]


def test_an_interrupted_sweep_resumes_to_the_same_rows(tmp_path, monkeypatch):
    args = [POINT, "--grid", "lr=1e-3,3e-3", "--seeds", "2", "--jobs", "1", *TINY, "--quiet"]
    assert invoke("sweep", *args, "--out", tmp_path / "whole").exit_code == 0
    interrupt_at_update(monkeypatch, 6)  # Ctrl-C in the second job; the third and fourth never start
    assert invoke("sweep", *args, "--out", tmp_path / "cut").exit_code == 130
    monkeypatch.undo()
    sweep = tmp_path / "cut" / "sweeps" / "sweep"
    resumed = invoke("sweep", "--resume", sweep, "--trust-env", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert "4 job(s) to train" not in text(resumed) and "1 finished" in text(resumed)
    for point in ("lr=1e-3", "lr=3e-3"):
        for seed in (0, 1):
            part = Path("tests.fake_envs_PointEnv") / point / f"seed_{seed}"
            assert progress(sweep / part).equals(progress(tmp_path / "whole" / "sweeps" / "sweep" / part))
    again = invoke("sweep", "--resume", sweep, "--trust-env", "--quiet")
    assert again.exit_code == 0 and "0 job(s) to train" in text(again) and "4 finished" in text(again)
    assert invoke("sweep", "--resume", sweep, "--lr", "0.1").exit_code == 2


@pytest.mark.parametrize("content, message", [
    ("[]", "is not a ppo sweep record"), ("null", "is not a ppo sweep record"), ('"x"', "is not a ppo sweep record"),
    ('{"format": "ppo_cli.sweep", "runs": ["../elsewhere"]}', "is not a ppo sweep record"),
    ('{"format": "ppo_cli.sweep", "runs": ["/tmp/elsewhere"]}', "is not a ppo sweep record"),
    ("{", "is not readable JSON"),
])
def test_a_crafted_sweep_json_is_one_error(tmp_path, content, message):
    """Before, a sweep.json holding a list, a string or null raised AttributeError (a traceback, exit 1)."""
    (tmp_path / "sweep.json").write_text(content)
    result = invoke("sweep", "--resume", tmp_path)
    assert result.exit_code == 2 and message in text(result), result.output


def test_a_damaged_run_json_in_a_sweep_is_one_error(tmp_path):
    """Before, plan_resume_sweep read each point's run.json outside any handling: a LayoutError traceback."""
    (tmp_path / "sweep.json").write_text(json.dumps({"format": "ppo_cli.sweep", "runs": ["E/lr=1"]}))
    (tmp_path / "E" / "lr=1").mkdir(parents=True)
    for content, message in (("{", "is not readable JSON"), ('{"format": "ppo_cli.run"}', "'seeds' must be a list")):
        (tmp_path / "E" / "lr=1" / "run.json").write_text(content)
        for extra in ([], ["--eval"]):
            result = invoke("sweep", "--resume", tmp_path, *extra)
            assert result.exit_code == 2 and message in text(result), result.output


def test_sigterm_stops_a_sweep_that_then_resumes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "ppo_cli", "sweep", POINT, "--grid", "lr=1e-3,3e-3", "--seeds", "1",
               "--total-steps", "2000000", *TINY[2:], "--checkpoint-interval", "100000", "--out", str(tmp_path),
               "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    sweep = tmp_path / "sweeps" / "sweep"
    rows = [sweep / "tests.fake_envs_PointEnv" / p / "seed_0" / "progress.csv" for p in ("lr=1e-3", "lr=3e-3")]
    deadline = time.time() + 120
    while time.time() < deadline and not all(r.is_file() and len(r.read_text().splitlines()) > 3 for r in rows):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in output, output
    for row in rows:  # each job saved its last finished iteration
        from ppo_cli.checkpoint import load_checkpoint

        assert load_checkpoint(row.parent / "checkpoint.pt")["global_step"] == pd.read_csv(row)["global_step"].iloc[-1]
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["grid"] == [["lr", ["1e-3", "3e-3"]]]


def test_a_failing_job_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    from ppo_cli.trainer import _Seeds

    monkeypatch.setenv("PPO_TEST_NAN_ENV_SEED", str(_Seeds.from_seed(1, 1).env_seeds[0]))
    result = invoke("sweep", "tests.fake_envs:NanForSeedEnv", "--grid", "lr=1e-3,3e-3", "--seeds", "2",
                    "--total-steps", "2048", *TINY[2:], "--out", tmp_path, "--quiet")
    assert result.exit_code == 1, result.output
    assert text(result).count("failed at step") == 2  # seed 1 of both points
    ranking = pd.read_csv(tmp_path / "sweeps" / "sweep" / "sweep.csv")
    assert len(ranking) == 2  # ranked from what the seeds wrote


def test_without_the_ray_extra_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    result = invoke("sweep", POINT, "--grid", "lr=1e-3", "--seeds", "1", *TINY, "--out", tmp_path, "--ray", "auto")
    assert result.exit_code == 2
    assert "--ray needs the ray extra: pip install -c constraints.txt -e '.[ray]'" in text(result)


# ----------------------------------------------------------------------------- Ray, on real local clusters

ray = pytest.importorskip("ray", reason="the ray extra (make installs it)")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # a test cluster on loopback, no token


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real Ray head (`ray start --head --block`) in a session of its own, stopped by its process group."""
    port = 6380 + os.getpid() % 500
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(ROOT)}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--object-store-memory=200000000", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={address!r}); ray.shutdown()"],
                                   capture_output=True, text=True, env=env, timeout=90)
            if probe.returncode == 0:
                break
            if time.time() > deadline or head.poll() is not None:
                raise RuntimeError(f"the Ray head did not start: {probe.stderr[-1500:]}")
            time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head's own group: never `ray stop`, which stops every Ray
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def _same_as_local(tmp_path: Path, ray_args: list[str], monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # where Ray's workers find tests.fake_envs
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    tensorboard = importlib.util.find_spec("tensorboard") is not None  # the extra (make installs it)
    args = ["sweep", POINT, "--grid", "lr=1e-3,3e-3", "--seeds", "1", *TINY, "--eval-interval", "2",
            "--eval-episodes", "2", *(["--tensorboard"] if tensorboard else []), "--quiet"]
    on_ray = invoke(*args, "--out", tmp_path / "ray", *ray_args)
    assert on_ray.exit_code == 0, on_ray.output
    assert invoke(*args, "--out", tmp_path / "local").exit_code == 0
    for point in ("lr=1e-3", "lr=3e-3"):
        part = Path("sweeps") / "sweep" / "tests.fake_envs_PointEnv" / point / "seed_0"
        ray_dir, local_dir = tmp_path / "ray" / part, tmp_path / "local" / part
        for name in ("config.json", "checkpoint.pt", "episodes.csv", "evaluations.csv", "best.pt"):
            assert (ray_dir / name).is_file(), name  # the files came back to the driver
        assert progress(ray_dir).equals(progress(local_dir))  # same rows
        evaluations = [pd.read_csv(d / "evaluations.csv").drop(columns="time_s") for d in (ray_dir, local_dir)]
        assert evaluations[0].equals(evaluations[1]) and len(evaluations[0]) == 2  # trained in 4 segments
        best = [torch.load(d / "best.pt", weights_only=True) for d in (ray_dir, local_dir)]
        assert best[0]["global_step"] == best[1]["global_step"]
        assert all(torch.equal(a, b) for a, b in zip(best[0]["model"].values(), best[1]["model"].values()))
        if tensorboard:
            assert list(ray_dir.glob("events.out.tfevents.*"))
    assert pd.read_csv(tmp_path / "ray" / "sweeps" / "sweep" / "sweep.csv")["point"].tolist() == \
        pd.read_csv(tmp_path / "local" / "sweeps" / "sweep" / "sweep.csv")["point"].tolist()


def test_a_file_name_from_a_worker_stays_inside_the_seed_folder(tmp_path):
    from ppo_cli.ray_jobs import _destination

    assert _destination(tmp_path, "videos/step_2.mp4") == tmp_path / "videos" / "step_2.mp4"
    for name in ("../escape.csv", "/etc/passwd", "", "videos/../../x", 3, "."):
        with pytest.raises(ValueError, match="not inside a seed folder"):
            _destination(tmp_path, name)


def test_ray_in_process_cluster_gives_the_local_rows(tmp_path, monkeypatch):
    """--ray local: ray.init(address="local") starts a cluster in this process for the sweep."""
    _same_as_local(tmp_path, ["--ray", "local"], monkeypatch)
    assert not ray.is_initialized()  # the sweep disconnected


def test_ray_head_reached_through_its_address_gives_the_local_rows(tmp_path, monkeypatch, ray_head):
    _same_as_local(tmp_path, ["--ray", ray_head], monkeypatch)


def segment_that_dies_once(config, files, until_iteration, resume):
    """train_segment, except that its first attempt at the segment ending at iteration 3 of lr=3e-3 kills the
    Ray worker process it runs in (as a lost node would); Ray then retries it from the same input."""
    from ppo_cli import ray_jobs

    marker = Path(os.environ["PPO_TEST_MARKER"])
    if until_iteration == 3 and config["lr"] == 3e-3 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return ray_jobs.train_segment(config, files, until_iteration, resume)


def test_a_lost_ray_worker_is_retried_from_its_last_checkpoint(tmp_path, monkeypatch, ray_head):
    from ppo_cli import ray_jobs

    marker = tmp_path / "worker-killed"
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ray_jobs, "train_segment", segment_that_dies_once)  # Ray ships it by name: tests.test_sweep
    ray.init(address=ray_head, logging_level="ERROR",  # the sweep uses this connection, with the marker's path
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "PPO_TEST_MARKER": str(marker)}})
    try:
        _same_as_local(tmp_path, ["--ray", ray_head], monkeypatch)
    finally:
        ray.shutdown()
    assert marker.is_file()


def test_an_unreachable_cluster_is_one_error(tmp_path, monkeypatch):
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    result = invoke("sweep", POINT, "--grid", "lr=1e-3", "--seeds", "1", *TINY, "--out", tmp_path,
                    "--ray", "127.0.0.1:1")
    assert result.exit_code == 2 and "no Ray cluster could be reached at '127.0.0.1:1'" in text(result)
