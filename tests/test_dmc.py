"""DeepMind Control Suite tasks by name (the dmc extra, which make and CI install)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ppo_cli import dmc
from ppo_cli.checkpoint import load_checkpoint
from ppo_cli.cli import cli
from ppo_cli.envs import EnvBatch, make_env, resolve_env_id, time_limit
from tests.conftest import interrupt_at_update, same_rows
from tests.test_trust import env_without_display, ppo

ROOT = Path(__file__).parent.parent
SMALL = ["--num-envs", "1", "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "2",
         "--hidden-sizes", "16,16", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def text(result) -> str:
    return " ".join(result.output.split())


def without_shimmy(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` where importing shimmy fails, as on a machine without the dmc extra."""
    return subprocess.run([sys.executable, "-c", "import sys; sys.modules['shimmy'] = None\n" + code],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env_without_display())


def test_without_the_extra_dmc_names_are_one_error_naming_it(tmp_path):
    done = without_shimmy(tmp_path, "from ppo_cli.cli import cli; cli(['train', 'dmc:cheetah-run'])")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "DMC tasks need the dmc extra (pip install -c constraints.txt -e '.[dmc]')" in done.stderr
    listed = without_shimmy(tmp_path, "from ppo_cli.cli import cli; cli(['envs'])")
    assert listed.returncode == 0 and "need the dmc extra" in listed.stdout


def test_a_dm_control_built_for_another_mujoco_is_one_error_naming_the_versions(tmp_path):
    for name, body in (("shimmy", ""), ("dm_control", "raise AttributeError(\"'MjModel' object has no attribute "
                                                      "'flex_vertedge'\")")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body + "\n")
    done = subprocess.run([sys.executable, "-m", "ppo_cli", "train", "dmc:cheetah-run"], capture_output=True,
                          text=True, timeout=120, env=env_without_display(PYTHONPATH=f"{tmp_path}:{ROOT}"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "does not work with mujoco" in done.stderr and "the dmc extra needs mujoco < 4" in done.stderr


needs_dmc = pytest.mark.skipif(importlib.util.find_spec("shimmy") is None, reason="the dmc extra is not installed")



@needs_dmc
def test_names_resolve_to_shimmys_registered_ids():
    assert resolve_env_id("dmc:cheetah-run") == "dm_control/cheetah-run-v0"
    assert resolve_env_id("DMC:ball_in_cup-catch") == "dm_control/ball_in_cup-catch-v0"
    assert resolve_env_id("dm_control/walker-walk-v0") == "dm_control/walker-walk-v0"
    assert ("dmc:finger-turn_hard", "dm_control/finger-turn_hard-v0") in dmc.task_table()


@needs_dmc
@pytest.mark.parametrize("name, message", [
    ("dmc:cheetah-fly", "unknown DMC task 'dmc:cheetah-fly': cheetah has: run"),
    ("dmc:walker-jump", "walker has: run, stand, walk"),
    ("dmc:cheetahh-run", "unknown DMC domain 'cheetahh' in 'dmc:cheetahh-run'; domains: acrobot, ball_in_cup"),
    ("dm_control/cheetah-fly-v0", "unknown DMC id 'dm_control/cheetah-fly-v0'"),
])
def test_unknown_tasks_are_one_error_listing_what_exists(tmp_path, name, message):
    result = invoke("train", name, "--out", tmp_path)
    assert result.exit_code == 2 and message in text(result), result.output
    assert not list(tmp_path.iterdir())


@needs_dmc
def test_observations_are_flattened_in_the_documented_order():
    env = make_env("dm_control/walker-walk-v0")
    assert dmc.observation_keys(env) == ["height", "orientations", "velocity"]  # sorted by name
    flat, _ = env.reset(seed=3)
    raw = env.unwrapped._env.physics  # the same state, read through DMC's own observation function
    task = env.unwrapped._env.task
    observed = task.get_observation(raw)
    assert list(observed) == ["orientations", "height", "velocity"]  # DMC's own order differs
    expected = np.concatenate([np.ravel(observed[k]) for k in ("height", "orientations", "velocity")])
    np.testing.assert_array_equal(flat, expected)
    assert env.metadata["render_fps"] == pytest.approx(1 / env.unwrapped.dt)


@needs_dmc
def test_building_a_task_logs_no_notes_on_dmcs_own_model_files(caplog):
    with caplog.at_level("WARNING"):
        make_env("dm_control/cheetah-run-v0").close()
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()], caplog.text


@needs_dmc
def test_episodes_end_at_dmcs_time_limit_as_a_truncation():
    env = make_env("dm_control/cartpole-swingup-v0", action_repeat=8)
    env.reset(seed=0)
    for step in range(1, 126):
        _, _, terminated, truncated, _ = env.step(np.zeros(1))
        assert not terminated and truncated == (step == 125)  # 1000 frames in steps of 8


@needs_dmc
def test_stagger_resets_finds_dmcs_time_limit_and_cuts_first_episodes_within_it():
    """dm_control's own step limit (1000 frames, no TimeLimit wrapper): 125 steps with a repeat of 8."""
    assert time_limit(make_env("dm_control/cartpole-swingup-v0")) == 1000
    batch = EnvBatch("dm_control/cartpole-swingup-v0", 6, list(range(6)), action_repeat=8, stagger=True)
    cuts = batch.cuts.tolist()
    assert all(1 <= c <= 125 for c in cuts) and len(set(cuts)) > 1
    batch.reset()
    ends: list[list[int]] = [[] for _ in cuts]
    for step in range(1, 261):
        _, _, terminated, truncated, _ = batch.step(np.zeros((6, 1)))
        assert not terminated.any()
        for i in np.flatnonzero(truncated):
            ends[i].append(step)
    assert ends == [[c, c + 125] + ([c + 250] if c <= 10 else []) for c in cuts]


@needs_dmc
def test_a_dmc_run_trains_resumes_exactly_and_evaluates_with_the_registered_id(tmp_path, monkeypatch):
    """cartpole-swingup with --action-repeat 4: episodes of 250 steps end inside the run, so the
    checkpoint of step 512 is mid-episode in an episode begun from dm_control's RandomState."""
    options = ["--total-steps", "1024", "--action-repeat", "4", "--checkpoint-interval", "1", *SMALL]
    full = invoke("train", "dmc:cartpole-swingup", "--out", tmp_path, "--run-name", "full", *options)
    assert full.exit_code == 0, full.output
    with monkeypatch.context() as m:
        interrupt_at_update(m, 5)
        cut = invoke("train", "dmc:cartpole-swingup", "--out", tmp_path, "--run-name", "cut", *options)
        assert cut.exit_code == 130, cut.output
    run = tmp_path / "dm_control_cartpole-swingup-v0"
    state = load_checkpoint(run / "cut" / "seed_0" / "checkpoint.pt")
    assert state["global_step"] == 512 and "random_state" in state["envs"]["episode_start"][0]["rng"]
    assert json.loads((run / "cut" / "seed_0" / "config.json").read_text())["env_id"] == "dm_control/cartpole-swingup-v0"
    assert invoke("train", "--resume", run / "cut", "--quiet").exit_code == 0  # a registered id: no --trust-env
    assert same_rows(run / "full" / "seed_0", run / "cut" / "seed_0")
    assert pd.read_csv(run / "full" / "seed_0" / "episodes.csv")["length"].tolist() == [250, 250, 250, 250]
    evaluated = invoke("eval", run / "full" / "seed_0" / "checkpoint.pt", "--episodes", "1", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["lengths"] == [250]
    evaluated = invoke("eval", run / "full" / "seed_0", "--json")  # DMC's default: 50 episodes
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["lengths"] == [250] * 50, evaluated.output


@needs_dmc
def test_eval_renders_a_dmc_task_headless_with_MUJOCO_GL_unset(tmp_path):
    assert invoke("train", "dmc:cartpole-swingup", "--total-steps", "256", "--out", tmp_path, *SMALL).exit_code == 0
    checkpoint = tmp_path / "dm_control_cartpole-swingup-v0" / "default" / "seed_0" / "checkpoint.pt"
    video = tmp_path / "clip.mp4"
    done = ppo("eval", checkpoint, "--episodes", "1", "--frames", "4", "--video", video)
    assert done.returncode == 0, done.stdout + done.stderr
    import imageio.v3 as iio

    frames = iio.imread(video, plugin="FFMPEG")
    assert frames.shape[0] == 4 and min(float(f.std()) for f in frames) > 5.0  # the scene, not blank frames


@needs_dmc
def test_the_tuned_preset_changes_the_benchmarked_dmc_tasks_only(tmp_path):
    """By either name; an option given beside the preset still wins; cheetah-run gets GAE lambda 0.9,
    walker-walk ReLU networks, walker-run ELU ones."""
    small = [a for a in SMALL if a not in ("--hidden-sizes", "16,16")]
    cases = (("dmc:cheetah-run", [], [256, 256], -0.5, False, "tanh", 0.9),
             ("dm_control/cheetah-run-v0", ["--hidden-sizes", "32,32"], [32, 32], -0.5, False, "tanh", 0.9),
             ("dmc:cheetah-run", ["--gae-lambda", "0.95"], [256, 256], -0.5, False, "tanh", 0.95),
             ("dmc:reacher-hard", ["--init-log-std", "-1"], [256, 256], -1.0, False, "tanh", 0.95),
             ("dmc:finger-spin", [], [64, 64], 0.0, True, "tanh", 0.95),
             ("dmc:walker-walk", [], [256, 256], -0.5, False, "relu", 0.95),
             ("dmc:walker-run", [], [256, 256], -0.5, False, "elu", 0.95),
             ("dmc:walker-run", ["--activation", "tanh"], [256, 256], -0.5, False, "tanh", 0.95))
    for k, (name, given, sizes, log_std, stagger, activation, gae_lambda) in enumerate(cases):
        result = invoke("train", name, "--preset", "tuned", "--total-steps", "128", "--out", tmp_path,
                        "--run-name", f"run{k}", *small, *given)
        assert result.exit_code == 0, result.output
        (config,) = tmp_path.glob(f"*/run{k}/seed_0/config.json")
        saved = json.loads(config.read_text())
        assert (saved["hidden_sizes"], saved["init_log_std"], saved["stagger_resets"]) == (sizes, log_std, stagger), name
        assert (saved["activation"], saved["gae_lambda"]) == (activation, gae_lambda), name
    for given, stagger in (([], True), (["--no-stagger-resets"], False)):  # cartpole-swingup: staggered resets
        result = invoke("train", "dmc:cartpole-swingup", "--preset", "tuned", "--total-steps", "128", "--out",
                        tmp_path, "--run-name", f"cartpole{stagger}", *small, *given)
        assert result.exit_code == 0, result.output
        (config,) = tmp_path.glob(f"*/cartpole{stagger}/seed_0/config.json")
        saved = json.loads(config.read_text())
        assert (saved["hidden_sizes"], saved["stagger_resets"]) == ([64, 64], stagger)


@needs_dmc
def test_walker_pitch_replays_ppo_evals_episodes_and_splits_them_by_the_start_pitch(tmp_path):
    """benchmarks/walker_pitch.py: the same returns as ``ppo eval``, a pitch DMC draws in [-pi, pi],
    and one error line (exit 2) for a policy of another task."""
    from ppo_cli.evaluate import evaluate, load_agent

    for name in ("dmc:walker-walk", "dmc:cartpole-swingup"):
        result = invoke("train", name, "--total-steps", "128", "--out", tmp_path, "--run-name", "r", *SMALL)
        assert result.exit_code == 0, result.output
    (walker,) = tmp_path.glob("dm_control_walker-walk*/r/seed_0")
    (cartpole,) = tmp_path.glob("dm_control_cartpole-swingup*/r/seed_0")
    out = tmp_path / "episodes.csv"
    script = [sys.executable, str(ROOT / "benchmarks" / "walker_pitch.py")]
    done = subprocess.run([*script, str(walker), "--episodes", "3", "--csv", str(out)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env_without_display())
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    expected = evaluate(walker / "checkpoint.pt", load_agent(walker / "checkpoint.pt"), episodes=3).returns
    np.testing.assert_allclose(table["return"], expected, rtol=0, atol=1e-9)
    assert table["pitch"].between(-np.pi, np.pi).all() and table["pitch"].nunique() == 3
    assert (table["torso_height"] > 0).all() and "pitch" in done.stdout and f"mean {np.mean(expected):.1f}" in done.stdout
    wrong = subprocess.run([*script, str(cartpole), "--episodes", "1"], capture_output=True, text=True,
                           timeout=300, cwd=ROOT, env=env_without_display())
    assert wrong.returncode == 2 and "dm_control/cartpole-swingup-v0; this reads DMC walker tasks only" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    bad = subprocess.run([*script, str(walker), "--episodes", "0"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env=env_without_display())
    assert bad.returncode == 2 and "argument --episodes: 0 is not a positive integer" in bad.stderr
