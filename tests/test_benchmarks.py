"""The learning-quality benchmark script end to end, on a tiny budget."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_mujoco_suite_trains_evaluates_summarises_and_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "mujoco_suite.py"), "--tasks", "InvertedPendulum-v5",
               "--seeds", "2", "--steps", "2048", "--jobs", "2", "--episodes", "2", "--runs", str(tmp_path / "runs"),
               "--results", str(tmp_path / "res"), "--set", "num_envs=4", "--set", "num_steps=256",
               "--set", "hidden_sizes=16,16"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert summary.loc[0, "env"] == "InvertedPendulum-v5" and summary.loc[0, "seeds"] == 2
    for column in ("eval_iqm", "eval_iqm_ci_low", "eval_iqm_ci_high", "eval_mean", "eval_std", "final_mean",
                   "wall_time_s", "sps"):
        assert pd.notna(summary.loc[0, column]), column
    seeds = pd.read_csv(tmp_path / "res" / "seeds.csv")
    assert sorted(seeds["seed"]) == [0, 1] and (seeds["steps"] == 2048).all()
    assert summary.loc[0, "eval_mean"] == pytest.approx(seeds["eval_mean"].mean())
    assert (tmp_path / "res" / "learning_curves.png").stat().st_size > 10_000
    assert '"num_envs": 4' in (tmp_path / "res" / "config.json").read_text()
    versions = json.loads((tmp_path / "res" / "versions.json").read_text())
    assert versions["torch"] == [torch.__version__] and versions["gymnasium"] == [gym.__version__]

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "every seed has finished" in again.stdout and "is evaluated" in again.stdout
    for seed_dir in sorted((tmp_path / "runs" / "InvertedPendulum-v5" / "default").glob("seed_*")):
        final, best = (json.loads((seed_dir / name).read_text()) for name in ("eval.json", "best_eval.json"))
        assert (Path(final["checkpoint"]).name, Path(best["checkpoint"]).name) == ("checkpoint.pt", "best.pt")
    assert seeds["best_checkpoint_mean"].notna().all()
    assert summary.loc[0, "best_checkpoint_iqm"] == pytest.approx(seeds["best_checkpoint_mean"].mean())  # 2 seeds
    assert (seeds["eval_episodes"] == 2).all() and summary.loc[0, "eval_episodes"] == 2

    more = subprocess.run(command + ["--skip-train", "--episodes", "3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # the last --episodes wins
    assert more.returncode == 0 and "is evaluated" not in more.stdout, more.stderr[-2000:]
    assert (pd.read_csv(tmp_path / "res" / "seeds.csv")["eval_episodes"] == 3).all()
    assert pd.read_csv(tmp_path / "res" / "summary.csv").loc[0, "eval_episodes"] == 3

    (tmp_path / "runs" / "InvertedPendulum-v5" / "default" / "seed_1" / "eval.json").write_text("{\"epis")
    damaged = subprocess.run(command + ["--skip-train", "--episodes", "3"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)  # a damaged eval.json is evaluated again, no traceback
    assert damaged.returncode == 0 and "Traceback" not in damaged.stderr, damaged.stderr[-2000:]
    assert (pd.read_csv(tmp_path / "res" / "seeds.csv")["eval_episodes"] == 3).all()

    changed = subprocess.run(command[:-1] + ["hidden_sizes=32,32"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert changed.returncode != 0 and "another config" in changed.stderr


@pytest.mark.skipif(importlib.util.find_spec("shimmy") is None, reason="the dmc extra (make installs it)")
def test_the_dmc_suite_runs_dmc_tasks_by_name_with_their_targets(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "mujoco_suite.py"), "--suite", "dmc", "--tasks",
               "dmc:cartpole-swingup", "--seeds", "1", "--steps", "4096", "--episodes", "1",
               "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), "--set", "num_envs=2",
               "--set", "num_steps=512", "--set", "action_repeat=4", "--set", "hidden_sizes=16,16"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert summary.loc[0, "env"] == "dm_control/cartpole-swingup-v0" and summary.loc[0, "target"] == 800
    for column in ("eval_iqm", "final_mean", "wall_time_s", "sps"):  # the id's "/" is not in its folder's name
        assert pd.notna(summary.loc[0, column]), column
    seed = pd.read_csv(tmp_path / "res" / "seeds.csv").loc[0]
    assert seed["env"] == "dm_control/cartpole-swingup-v0"
    assert (seed["steps"], seed["frames"]) == (1024, 4096)  # --steps counts frames: 4096 / action repeat 4


def test_mujoco_suite_rejects_an_unknown_override():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mujoco_suite.py"), "--set", "lr_typo=1",
                             "--skip-train"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "lr_typo" in result.stderr and "init_log_std" in result.stderr
    for bad in ("0", "-3", "ten"):
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mujoco_suite.py"), "--episodes", bad,
                                 "--skip-train"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and f"argument --episodes: {bad!r} is not a positive integer" in result.stderr


def test_mujoco_suite_gives_each_task_its_preset_values_and_records_them():
    mujoco_suite = benchmark_module("mujoco_suite")
    configs = mujoco_suite.task_configs(["Hopper-v4", "Walker2d-v4"], 4096, "tuned", {"lr": 1e-4})
    assert configs["Walker2d-v4"].gae_lambda == 0.9 and configs["Hopper-v4"].gae_lambda == 0.95
    assert configs["Hopper-v4"].lr == configs["Walker2d-v4"].lr == 1e-4
    record = mujoco_suite.config_record(configs)
    assert record["per_task"] == {"Hopper-v4": {"gae_lambda": 0.95}, "Walker2d-v4": {"gae_lambda": 0.9}}
    assert "gae_lambda" not in record and record["lr"] == 1e-4 and record["total_steps"] == 4096
    assert "per_task" not in mujoco_suite.config_record({"Hopper-v4": configs["Hopper-v4"]})
    repeated = mujoco_suite.task_configs(["Hopper-v4"], 1_000_000, None, {"action_repeat": 3})["Hopper-v4"]
    assert (repeated.total_steps, repeated.action_repeat) == (333_333, 3)  # the same frames for every task
    dmc = mujoco_suite.task_configs(["dm_control/walker-run-v0", "dm_control/cartpole-swingup-v0"], 4096, "tuned", {})
    assert mujoco_suite.config_record(dmc)["per_task"] == {
        "dm_control/walker-run-v0": {"hidden_sizes": [256, 256], "activation": "elu", "stagger_resets": False},
        "dm_control/cartpole-swingup-v0": {"hidden_sizes": [64, 64], "activation": "tanh", "stagger_resets": True}}
    assert configs["Hopper-v4"].eval_interval == 10  # the evaluation curve, every 10 iterations on MuJoCo
    interval = mujoco_suite.SUITES["dmc"][2]
    assert interval == 50 and mujoco_suite.task_configs(["dm_control/walker-walk-v0"], 4096, None, {},
                                                        interval)["dm_control/walker-walk-v0"].eval_interval == 50
    assert mujoco_suite.task_configs(["Hopper-v4"], 4096, None, {"eval_interval": 0}, 50)["Hopper-v4"].eval_interval == 0


def test_the_suite_evaluates_each_task_with_as_many_episodes_as_ppo_eval(tmp_path, monkeypatch):
    """50 on a DMC task and 10 on a MuJoCo one in the same invocation; --episodes sets both; a seed
    already evaluated with that number is left alone; a best.pt is evaluated too, into its own file,
    and an eval.json that names best.pt (an earlier ``ppo eval --best`` wrote it) is not the final one's."""
    mujoco_suite = benchmark_module("mujoco_suite")
    folders = {}
    for env_id in ("dm_control/walker-walk-v0", "Hopper-v4"):
        seed = tmp_path / env_id.replace("/", "_") / "run" / "seed_0"
        seed.mkdir(parents=True)
        (seed / "checkpoint.pt").write_bytes(b"")
        folders[env_id] = seed.parent
    walker, hopper = folders["dm_control/walker-walk-v0"], folders["Hopper-v4"]
    calls = []
    monkeypatch.setattr(mujoco_suite.subprocess, "run", lambda command, check: calls.append(command[4:]))
    mujoco_suite.evaluate_all(folders, None)
    assert calls == [[str(walker), "--episodes", "50"], [str(hopper), "--episodes", "10"]]
    calls.clear()
    mujoco_suite.evaluate_all(folders, 3)
    assert [call[-1] for call in calls] == ["3", "3"]
    time.sleep(0.01)

    def result(checkpoint: str, episodes: int = 10) -> str:
        return json.dumps({"checkpoint": str(hopper / "seed_0" / checkpoint), "mean": 5.0, "episodes": episodes})

    (hopper / "seed_0" / "eval.json").write_text(result("checkpoint.pt"))
    calls.clear()
    mujoco_suite.evaluate_all(folders, None)
    assert calls == [[str(walker), "--episodes", "50"]]

    (hopper / "seed_0" / "best.pt").write_bytes(b"")
    time.sleep(0.01)
    calls.clear()
    mujoco_suite.evaluate_all({"Hopper-v4": hopper}, None)
    assert calls == [[str(hopper), "--episodes", "10", "--best"]]
    (hopper / "seed_0" / "best_eval.json").write_text(result("best.pt"))
    (hopper / "seed_0" / "eval.json").write_text(result("best.pt"))
    calls.clear()
    mujoco_suite.evaluate_all({"Hopper-v4": hopper}, None)
    assert calls == [[str(hopper), "--episodes", "10"]]
    assert mujoco_suite.evaluated_episodes(hopper / "seed_0", best=True) == 10
    assert mujoco_suite.evaluated_episodes(hopper / "seed_0") is None
    for crafted in ({"checkpoint": str(hopper / "seed_0" / "checkpoint.pt"), "episodes": 10},  # no mean
                    {"mean": float("nan"), "episodes": 10}, {"mean": True, "episodes": 10}, [1, 2],
                    {"mean": 1.0, "episodes": True}, {"checkpoint": 3, "mean": 1.0, "episodes": 10}):
        (hopper / "seed_0" / "eval.json").write_text(json.dumps(crafted))
        assert mujoco_suite.evaluated_episodes(hopper / "seed_0") is None, crafted


@pytest.mark.slow
def test_ctrl_c_stops_the_benchmark_at_once_and_starts_no_other_seed(tmp_path):
    """As a terminal's Ctrl-C (SIGINT to the whole process group): the running seeds save a checkpoint
    and stop, the queued ones never start, exit 130 with the line that says how to resume."""
    runs = tmp_path / "runs"
    command = [sys.executable, str(ROOT / "benchmarks" / "mujoco_suite.py"), "--tasks", "InvertedPendulum-v5",
               "--seeds", "4", "--steps", "400000", "--jobs", "2", "--runs", str(runs),
               "--results", str(tmp_path / "res"), "--set", "num_envs=4", "--set", "num_steps=256",
               "--set", "hidden_sizes=16,16", "--set", "eval_interval=0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    seeds = runs / "InvertedPendulum-v5" / "default"
    try:
        deadline = time.monotonic() + 120
        while not all(rows_in(seeds / f"seed_{k}") for k in (0, 1)):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "run the same command again" in err
    assert all((seeds / f"seed_{k}" / "checkpoint.pt").is_file() for k in (0, 1))
    assert not any((seeds / f"seed_{k}" / "progress.csv").exists() for k in (2, 3)), out
    assert 0 < rows_in(seeds / "seed_0") < 400000 // 1024


def rows_in(seed_dir: Path) -> int:
    progress = seed_dir / "progress.csv"
    return max(0, len(progress.read_text().splitlines()) - 1) if progress.is_file() else 0


def test_pool_combines_runs_of_two_benchmarks_per_task(tmp_path, capsys):
    pool = benchmark_module("pool")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, rows in ((a, [("dm_control/walker-walk-v0", 0, 500.0), ("dm_control/walker-walk-v0", 1, 520.0),
                               ("dm_control/cheetah-run-v0", 0, 700.0), ("Hopper-v4", 0, 3000.0)]),
                         (b, [("dm_control/walker-walk-v0", 0, 440.0), ("dm_control/walker-walk-v0", 1, 900.0),
                              ("dm_control/cheetah-run-v0", 0, 10.0)])):
        folder.mkdir()
        pd.DataFrame(rows, columns=["env", "seed", "eval_mean"]).to_csv(folder / "seeds.csv", index=False)
    assert pool.main([str(a), f"{b}:walker-walk", "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "pooled.csv").set_index("env")
    walker = table.loc["dm_control/walker-walk-v0"]
    # 4 runs (seed 0 twice: two machines, two samples); IQM of 440, 500, 520, 900 = mean of 500 and 520
    assert walker["runs"] == 4 and walker["eval_iqm"] == pytest.approx(510.0)
    assert walker["eval_iqm_ci_low"] <= 510 <= walker["eval_iqm_ci_high"] and walker["target"] == 650
    assert not walker["met"] and walker["sources"] == f"{a} {b}"
    cheetah = table.loc["dm_control/cheetah-run-v0"]  # b's cheetah-run was not asked for
    assert cheetah["runs"] == 1 and cheetah["eval_iqm"] == 700.0 and cheetah["met"]
    assert table.loc["Hopper-v4", "target"] == 2800
    assert "dm_control/walker-walk-v0: 4 runs, evaluation IQM 510" in capsys.readouterr().out

    with pytest.raises(SystemExit, match=r":walker-run: .* has no task walker-run; it has dm_control/cheetah-run-v0"):
        pool.main([f"{b}:walker-run", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="no seeds.csv"):
        pool.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
