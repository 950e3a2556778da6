"""Learning quality on MuJoCo: train, evaluate and summarise Hopper, HalfCheetah and Walker2d.

    make benchmark                                       # or:
    python benchmarks/mujoco_suite.py --seeds 5 --jobs 2       # 3 tasks x 5 seeds x 1M steps
    nohup make benchmark > benchmark.log 2>&1 &          # in the background
    python benchmarks/mujoco_suite.py --suite dmc --jobs 16   # DMC: cheetah-run, walker-walk, walker-run,
                                                         # cartpole-swingup, finger-spin, reacher-hard

Three phases, each skipping work already done, so the same command resumes an interrupted
benchmark (Ctrl-C, a killed shell, a reboot). (Not named ``mujoco.py``: run as a script, that
name would shadow the ``mujoco`` package.)

1. **train** every (task, seed) with ``ppo``'s *default* config (``--preset NAME`` starts from a
   preset instead, ``--set name=value`` overrides a field, for experiments; ``config.json``
   records the result), in ``--jobs`` worker processes taking jobs from one queue across tasks,
   into ``RUNS/<env id>/<name>/seed_<k>/``, the layout of ``ppo train``. A seed with a
   checkpoint continues from it (``ppo train --resume``'s code path); a finished one is left
   alone.
2. **evaluate** every final checkpoint with ``ppo eval RUN --episodes N`` (deterministic: the
   Gaussian mean, the saved observation statistics frozen, raw rewards), which writes
   ``eval.json`` beside each checkpoint; N is 10 on MuJoCo and 50 on DMC, whose episodes are
   bimodal (reacher-hard reaches its target or scores 0, walker-walk walks or falls), where 10
   episodes leave a standard error of about 130 on a seed's mean (reacher-hard). A checkpoint
   evaluated with another number of episodes, or whose eval.json is unreadable or not its own, is
   evaluated again. Where training evaluated (``eval_interval``), each seed's ``best.pt`` is
   evaluated the same way (``ppo eval RUN --best``, into ``best_eval.json``): the checkpoint a user
   of ``ppo eval --best`` would keep, on the same start states as the final one's (``ppo eval``'s
   seed 0, not the evaluations that chose it).
3. **summarise** with ``ppo plot``'s library call: the figure (return, the evaluation curve and
   diagnostics across seeds, one column per task) and per task: seeds, IQM of the evaluation
   return with its 95% stratified-bootstrap interval, mean +- std, the final training return
   (mean of the episodes in each seed's last 10% of steps), the last and the best evaluation
   during training (10 episodes every 10 iterations, every 50 on DMC; the best is optimistic),
   the IQM of the best checkpoints' evaluations (``best_checkpoint_iqm``), wall time and
   steps/s. Written to ``RESULTS/summary.csv``,
   ``RESULTS/seeds.csv``, ``RESULTS/learning_curves.png``, ``RESULTS/config.json`` and
   ``RESULTS/versions.json`` (the package versions and CPU kernels each checkpoint recorded: two
   runs of the benchmark on other versions or kernels are two samples; ``benchmarks/pool.py``
   pools them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ppo_cli.checkpoint import read_checkpoint
from ppo_cli.config import PRESETS, Config, ConfigError, preset, task_family
from ppo_cli.envs import resolve_env_id
from ppo_cli.evaluate import default_episodes
from ppo_cli.files import atomic_write_text
from ppo_cli.launch import SeedJob, run_seeds
from ppo_cli.layout import (BEST_FILE, CHECKPOINT_FILE, CONFIG_FILE, EVAL_FILE, EVALUATIONS_FILE, PROGRESS_FILE,
                            LayoutError, current_evaluation, env_folder, is_seed_dir, plan_resume, read_evaluation,
                            seed_dirs, seed_folder)
from ppo_cli.plots.stats import iqm
from ppo_cli.signals import StopRequest

TASKS = ("Hopper-v4", "HalfCheetah-v4", "Walker2d-v4")
TARGETS = {  # evaluation IQM targets at 1M steps: the learning-quality issue's (v4; v5 for scale), the DMC issue's
    "Hopper": 2800, "HalfCheetah": 5000, "Walker2d": 3800,
    "dm_control/cheetah-run": 650, "dm_control/walker-walk": 650, "dm_control/walker-run": 200,
    "dm_control/cartpole-swingup": 800, "dm_control/finger-spin": 700, "dm_control/reacher-hard": 700,
}
SUITES = {  # --suite NAME: its tasks, where its summaries go, and the iterations between evaluations during
    # training: on DMC every 50 (about 100k frames), since each of its evaluations plays 10 whole episodes of
    # 1000 frames (every 10 would add half the training's frames)
    "mujoco": (TASKS, Path("benchmarks/results/mujoco"), 10),
    "dmc": (("dmc:cheetah-run", "dmc:walker-walk", "dmc:walker-run", "dmc:cartpole-swingup", "dmc:finger-spin",
             "dmc:reacher-hard"), Path("benchmarks/results/dmc"), 50),
}


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["lr=1e-4", "hidden_sizes=64,64"]`` -> field values, typed like the Config defaults."""
    defaults = Config(env_id="x").to_dict()
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in defaults or name in ("env_id", "seed", "total_steps"):
            raise SystemExit(f"--set {pair!r}: expected NAME=VALUE with NAME a config field "
                             f"({', '.join(n for n in defaults if n not in ('env_id', 'seed', 'total_steps'))})")
        default = defaults[name]
        if isinstance(default, bool):
            value: object = text.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, list):
            value = [int(v) for v in text.split(",")]
        elif text.lower() in ("none", "off", ""):
            value = None
        elif isinstance(default, int):
            value = int(text)
        elif isinstance(default, float) or default is None:
            value = float(text)
        else:
            value = text
        out[name] = value
    return out


def task_configs(tasks: list[str], frames: int, preset_name: str | None,
                 overrides: dict[str, object], eval_interval: int = 10) -> dict[str, Config]:
    """Each task's config (seed 0): the defaults, or ``preset_name``'s values for it, then ``overrides``,
    with an evaluation curve unless an override sets it: every ``eval_interval`` iterations 10
    deterministic episodes, the summary's last and best evaluation (evaluation does not change training,
    tested; only its wall time). Every task gets the same budget of ``frames`` environment steps:
    ``total_steps`` (the agent's) is ``frames // action_repeat``."""
    configs = {}
    recording = {"eval_interval": eval_interval, "eval_episodes": 10}
    for env_id in tasks:
        values = {**recording, **(preset(preset_name, env_id) if preset_name else {}), **overrides}
        values["total_steps"] = frames // int(values.get("action_repeat", 1))
        configs[env_id] = Config(env_id=env_id, **values)
    return configs


def seed_jobs(runs: Path, name: str, configs: dict[str, Config], seeds: range) -> list[SeedJob]:
    """Jobs still to run, interleaved across tasks; finished seeds are skipped, started ones resumed."""
    jobs = []
    for seed in seeds:
        for env_id, task_config in configs.items():
            config = task_config.replace(seed=seed)
            seed_dir = seed_folder(runs / env_folder(env_id) / name, seed)
            if not is_seed_dir(seed_dir):
                seed_dir.mkdir(parents=True, exist_ok=True)
                jobs.append(SeedJob(config, seed_dir, key=(env_id, seed)))
                continue
            try:
                (plan,) = plan_resume(seed_dir, config.total_steps, lambda p: read_checkpoint(p, resume=True))
            except LayoutError as exc:
                raise SystemExit(f"{exc}; use another --name or remove it") from None
            if plan.config != config:
                raise SystemExit(f"{seed_dir} was trained with another config; use another --name or remove it")
            if plan.action != "finished":
                jobs.append(SeedJob(config, seed_dir, resume=plan.action == "resume", key=(env_id, seed)))
    return jobs


def train_all(jobs: list[SeedJob], workers: int) -> int:
    """Train the jobs, ``workers`` at a time, with ``ppo train``'s launcher: Ctrl-C, SIGTERM or SIGHUP
    stop every running seed at its next step (saved, resumable) and start no other. Returns the exit
    code: 0 when every seed finished, 1 when one failed, ``128 + signal`` when stopped."""
    if not jobs:
        print("train: every seed has finished")
        return 0
    print(f"train: {len(jobs)} seed run(s), {workers} at a time", flush=True)
    every = {job.ident: max(1, job.config.num_iterations // 10) for job in jobs}

    def on_event(event: tuple) -> None:
        kind, (env_id, seed), payload = event
        if kind == "iteration" and payload["iteration"] % every[(env_id, seed)] == 0:
            ret = payload["final_return"]
            print(f"  {env_id} seed {seed}: step {payload['global_step']:>9,}  "
                  f"sps {payload['sps']:>5}  return {ret if ret is None else round(ret, 1)}", flush=True)
        elif kind == "done":
            print(f"done: {env_id} seed {seed}: {payload.status} {payload.message}".rstrip(), flush=True)

    with StopRequest() as stop:
        results = run_seeds(jobs, workers, on_event, stop)
        if stop.requested:
            return stop.exit_code
    return 0 if all(result.status == "finished" for result in results) else 1


def evaluated_episodes(seed_dir: Path, best: bool = False) -> int | None:
    """The episodes of the seed's up-to-date evaluation of its ``checkpoint.pt`` (``best``: of its
    ``best.pt``); None where it is missing, older than the checkpoint, unreadable or not that
    checkpoint's (then the checkpoint is evaluated again)."""
    result = current_evaluation(seed_dir, best)
    episodes = None if result is None else result.get("episodes")
    return episodes if isinstance(episodes, int) and not isinstance(episodes, bool) else None


def evaluate_all(run_folders: dict[str, Path], given: int | None) -> None:
    """Evaluate each task's run folder (env id -> folder) with ``given`` episodes, or by default with as
    many as ``ppo eval`` plays on that task (50 on DMC, 10 elsewhere): the final checkpoints, then the
    best ones where training kept them."""
    for env_id, folder in run_folders.items():
        episodes = given or default_episodes(env_id)
        for best in (False, True):
            which = f"{folder} ({BEST_FILE})" if best else str(folder)
            kept = [d for d in seed_dirs(folder) if (d / (BEST_FILE if best else CHECKPOINT_FILE)).is_file()]
            if best and not kept:
                continue
            if all(evaluated_episodes(d, best) == episodes for d in kept):
                print(f"eval: {which} is evaluated")
                continue
            print(f"eval: {which}", flush=True)
            subprocess.run([sys.executable, "-m", "ppo_cli", "eval", str(folder), "--episodes", str(episodes),
                            *(["--best"] if best else [])], check=True)


def summarise(run_folders: list[Path], results: Path, configs: dict[str, Config]) -> pd.DataFrame:
    from ppo_cli.plots.report import plot_runs

    results.mkdir(parents=True, exist_ok=True)
    plotted = plot_runs(run_folders, results / "learning_curves.png", with_eval=True)
    for warning in plotted.warnings:
        print(f"warning: {warning}")
    seeds = []
    for folder in run_folders:
        for seed_dir in seed_dirs(folder):
            progress = pd.read_csv(seed_dir / PROGRESS_FILE)
            evaluation = read_evaluation(seed_dir / EVAL_FILE)
            best = current_evaluation(seed_dir, best=True)
            last = progress.iloc[-1]
            curve = (pd.read_csv(seed_dir / EVALUATIONS_FILE)["mean"] if (seed_dir / EVALUATIONS_FILE).is_file()
                     else pd.Series(dtype=float))
            config = json.loads((seed_dir / CONFIG_FILE).read_text())
            env_id, repeat = config["env_id"], int(config.get("action_repeat", 1))  # a folder name has no "/"
            seeds.append({"env": env_id, "seed": int(seed_dir.name.split("_")[1]),
                          "eval_mean": evaluation["mean"], "eval_std": evaluation["std"],
                          "eval_episodes": evaluation["episodes"],
                          "last_evaluation": curve.iloc[-1] if len(curve) else np.nan,
                          "best_evaluation": curve.max() if len(curve) else np.nan,
                          "best_checkpoint_mean": best["mean"] if best else np.nan,
                          "best_checkpoint_step": best.get("global_step", np.nan) if best else np.nan,
                          "steps": int(last["global_step"]), "frames": int(last["global_step"]) * repeat,
                          "wall_time_s": float(last["time_s"]),
                          "sps": float(last["global_step"]) / float(last["time_s"])})
    per_seed = pd.DataFrame(seeds)
    atomic_write_text(results / "seeds.csv", per_seed.to_csv(index=False, float_format="%.6g"))
    timing = per_seed.groupby("env").agg(wall_time_s=("wall_time_s", "median"), sps=("sps", "median"),
                                         eval_episodes=("eval_episodes", "min"),
                                         best_checkpoint_iqm=("best_checkpoint_mean", best_checkpoint_iqm))
    summary = plotted.summary.join(timing, on="env")
    summary["target"] = summary["env"].map(lambda env_id: TARGETS.get(task_family(env_id)))
    atomic_write_text(results / "summary.csv", summary.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(results / "config.json", json.dumps(config_record(configs), indent=2) + "\n")
    atomic_write_text(results / "versions.json", json.dumps(versions_record(run_folders), indent=2) + "\n")
    return summary


def best_checkpoint_iqm(means: pd.Series) -> float:
    """IQM over seeds of the best checkpoints' evaluations; NaN unless every seed has one (a partial
    set would be another sample than the final checkpoints' IQM beside it)."""
    return float(iqm(means.to_numpy(dtype=float))) if len(means) and means.notna().all() else np.nan


def versions_record(run_folders: list[Path]) -> dict[str, list[str]]:
    """Per package, the versions the seeds' final checkpoints recorded (one each, where the runs agree)."""
    found: dict[str, set[str]] = {}
    for folder in run_folders:
        for seed_dir in seed_dirs(folder):
            versions = read_checkpoint(seed_dir / CHECKPOINT_FILE).get("versions", {})
            for package, version in versions.items():
                found.setdefault(str(package), set()).add(str(version))
    return {package: sorted(found[package]) for package in sorted(found)}


def config_record(configs: dict[str, Config]) -> dict[str, object]:
    """The fields every task shares, and under ``per_task`` those in which tasks differ."""
    fields = {env_id: {k: v for k, v in c.to_dict().items() if k not in ("env_id", "seed")}
              for env_id, c in configs.items()}
    first = next(iter(fields.values()))
    shared = {k: v for k, v in first.items() if all(f[k] == v for f in fields.values())}
    per_task = {env_id: {k: v for k, v in f.items() if k not in shared} for env_id, f in fields.items()}
    return {**shared, "per_task": per_task} if any(per_task.values()) else shared


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="mujoco",
                        help="the tasks: MuJoCo's Hopper, HalfCheetah, Walker2d-v4, or six DMC tasks (the dmc extra)")
    parser.add_argument("--tasks", default=None, help="comma-separated env ids or aliases [default: the suite's]")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="train seeds FIRST, FIRST + 1, ...")
    parser.add_argument("--steps", type=int, default=1_000_000,
                        help="environment frames per seed: the agent's steps times --action-repeat")
    parser.add_argument("--jobs", type=int, default=2, help="seed runs trained at once (processes)")
    parser.add_argument("--episodes", type=positive, default=None,
                        help="evaluation episodes per checkpoint [default: as ppo eval, 50 on DMC tasks and 10 on others]")
    parser.add_argument("--name", default="default", help="run name (folder under RUNS/<env id>/)")
    parser.add_argument("--runs", type=Path, default=Path("results/benchmark"), help="training output (not committed)")
    parser.add_argument("--results", type=Path, default=None,
                        help="summary folder [default: benchmarks/results/SUITE/NAME]")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="start from a named preset (ppo train --preset) instead of the defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a config field (experiments; the default config otherwise)")
    parser.add_argument("--skip-train", action="store_true", help="only evaluate and summarise")
    args = parser.parse_args()

    suite_tasks, suite_results, suite_interval = SUITES[args.suite]
    names = args.tasks.split(",") if args.tasks else suite_tasks
    try:
        tasks = [resolve_env_id(t.strip()) for t in names if t.strip()]
    except ValueError as exc:  # an unknown task, a missing extra
        raise SystemExit(f"--tasks: {exc}") from None
    try:
        configs = task_configs(tasks, args.steps, args.preset, parse_overrides(args.overrides), suite_interval)
    except ConfigError as exc:
        raise SystemExit(f"--set: {exc}") from None
    results = args.results or suite_results / args.name
    folders = {env_id: args.runs / env_folder(env_id) / args.name for env_id in tasks}
    start = time.perf_counter()
    if not args.skip_train:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        jobs = seed_jobs(args.runs, args.name, configs, seeds)
        code = train_all(jobs, args.jobs)
        if code:
            print("some seeds did not finish; run the same command again to resume them", file=sys.stderr)
            raise SystemExit(code)
    evaluate_all(folders, args.episodes)
    summary = summarise(list(folders.values()), results, configs)
    columns = ["env", "seeds", "eval_iqm", "eval_iqm_ci_low", "eval_iqm_ci_high", "eval_mean", "eval_std",
               "evaluation_last_iqm", "evaluation_best_iqm", "best_checkpoint_iqm",
               "final_mean", "final_std", "wall_time_s", "sps", "target"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.0f}".format):
        print(summary[columns].to_string(index=False))
    print(f"results: {results} ({time.perf_counter() - start:.0f} s)")
    for _, row in summary.iterrows():
        if np.isfinite(row["eval_iqm"]):
            print(f"{row['env']}: eval_iqm={row['eval_iqm']:.0f} target={row['target']}")


if __name__ == "__main__":
    main()
