"""The README's guarantees, tested as an adversary would break them (one group per item of the trust issue).

Real crafted checkpoints, real signals to real process trees, a real full (and read-only) file system
where the machine allows mounting one (CI runs as root), two processes on one run, hung environments.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ppo_cli import runs
from ppo_cli.checkpoint import load_checkpoint
from ppo_cli.cli import cli
from ppo_cli.config import Config
from ppo_cli.diagnostics import _truncate, valid_row
from ppo_cli.files import FolderBusy, FolderLock
from ppo_cli.launch import SeedJob, run_one
from ppo_cli.trainer import RunExists, train
from tests.conftest import interrupt_at_update, same_rows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
POINT = "tests.fake_envs:PointEnv"
SMALL = ["--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4", "--update-epochs", "2",
         "--hidden-sizes", "16,16", "--quiet"]


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)


def text(result) -> str:
    return " ".join(result.output.split())


def env_without_display(**extra: str) -> dict[str, str]:
    """The environment of a user on a headless machine who never heard of MUJOCO_GL."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def ppo(*args, cwd: Path | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m ppo_cli ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "ppo_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env_without_display(**env))


def start(*args, **env: str) -> subprocess.Popen:
    """``python -m ppo_cli ARGS`` in a session of its own, as a shell would start it."""
    return subprocess.Popen([sys.executable, "-m", "ppo_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env_without_display(**env),
                            start_new_session=True)


def wait_for_rows(progress: list[Path], rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if all(p.is_file() and len(p.read_text().splitlines()) > rows for p in progress):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {rows} rows in time (exit code {proc.poll()})")


def last_step(seed_dir: Path) -> tuple[int, int]:
    """(global_step of the checkpoint, global_step of the last progress.csv row)."""
    return (int(load_checkpoint(seed_dir / "checkpoint.pt")["global_step"]),
            int(pd.read_csv(seed_dir / "progress.csv")["global_step"].iloc[-1]))


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory) -> Path:
    """A small InvertedPendulum run folder (a registered environment; one seed)."""
    out = tmp_path_factory.mktemp("pendulum")
    result = invoke("train", "inverted-pendulum", "--total-steps", "512", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    return out / "InvertedPendulum-v5" / "default"


@pytest.fixture
def checkpoint(pendulum_run, tmp_path) -> Path:
    """A fresh copy of the pendulum seed folder's checkpoint, to tamper with."""
    seed_dir = tmp_path / "seed_0"
    shutil.copytree(pendulum_run / "seed_0", seed_dir)
    return seed_dir / "checkpoint.pt"


def craft(checkpoint: Path, edit) -> Path:
    """Edit a real checkpoint as an attacker would: load it as plain data, change it, save it."""
    state = torch.load(checkpoint, weights_only=True)
    edit(state)
    torch.save(state, checkpoint)
    return checkpoint


def set_env(env_id: str):
    def edit(state):
        state["config"]["env_id"] = env_id
        state["env_id"] = env_id
    return edit


def mount_tmpfs(folder: Path, size: str = "8m") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a file system needs root (CI runs as root)")


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB file system to fill up."""
    folder = tmp_path / "disk"
    mount_tmpfs(folder)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


# ----------------------------------------------------------------------------- 1. code execution


@pytest.fixture
def mkdtemp_spy(tmp_path, monkeypatch) -> Path:
    """The folder tempfile.mkdtemp would create its directory in: empty unless mkdtemp ran."""
    import tempfile

    spy = tmp_path / "tmp"
    spy.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spy))
    return spy


@pytest.mark.parametrize("env_id", ["tempfile:mkdtemp", "code:interact", "sys:exit"])
def test_1_a_crafted_checkpoint_never_runs_code(checkpoint, mkdtemp_spy, env_id):
    craft(checkpoint, set_env(env_id))
    for args in (["eval", checkpoint, "--episodes", "1"], ["train", "--resume", checkpoint.parent, "--total-steps", "1024"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert f"names the environment '{env_id}', a Python entry point" in text(result)
        assert "pass --trust-env" in text(result)
        assert ">>>" not in result.output and "InteractiveConsole" not in result.output  # no REPL opened
    assert list(mkdtemp_spy.iterdir()) == []  # mkdtemp never ran


@pytest.mark.parametrize("env_id", ["dmc:tempfile:mkdtemp", "dmc:os-fork", "DMC:tempfile:mkdtemp-v0"])
def test_1_a_dmc_name_in_a_checkpoint_imports_nothing(checkpoint, mkdtemp_spy, env_id):
    """dmc: names are not entry points; gym.make would import the module before a colon, so they
    are checked against DMC's task list first."""
    craft(checkpoint, set_env(env_id))
    for args in (["eval", checkpoint, "--episodes", "1"], ["train", "--resume", checkpoint.parent, "--total-steps", "1024"]):
        result = invoke(*args)
        assert result.exit_code == 2 and "DMC" in text(result) and "Traceback" not in result.output, result.output
    assert list(mkdtemp_spy.iterdir()) == []


@pytest.mark.parametrize("env_id", ["os:fork", "signal:pause"])
def test_1_a_crafted_checkpoint_cannot_fork_or_hang_eval(checkpoint, env_id):
    craft(checkpoint, set_env(env_id))
    done = ppo("eval", checkpoint, "--episodes", "1", timeout=60)  # signal:pause ran would hang: a timeout
    assert done.returncode == 2, done.stdout + done.stderr
    assert "a Python entry point" in done.stderr and done.stdout.count("Error") == 0


def test_1_a_module_beside_the_checkpoint_is_never_imported(checkpoint):
    folder = checkpoint.parent
    marker = folder / "imported"
    (folder / "beside.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Env: pass\n")
    craft(checkpoint, set_env("beside:Env"))
    done = ppo("eval", "checkpoint.pt", "--episodes", "1", cwd=folder)
    assert done.returncode == 2 and "pass --trust-env" in done.stderr
    done = ppo("eval", "checkpoint.pt", "--episodes", "1", "--trust-env", cwd=folder)  # trusted, still not from cwd
    assert done.returncode == 2 and "cannot import module 'beside'" in done.stderr, done.stderr
    assert not marker.exists()


def test_1_the_user_confirms_an_entry_point_with_trust_env_or_env(tmp_path):
    train(Config(env_id=POINT, total_steps=256, num_envs=1, num_steps=128, num_minibatches=2, update_epochs=1),
          tmp_path)
    assert invoke("eval", tmp_path, "--episodes", "1").exit_code == 2
    assert invoke("eval", tmp_path, "--episodes", "1", "--trust-env").exit_code == 0
    assert invoke("eval", tmp_path, "--episodes", "1", "--env", POINT).exit_code == 0
    assert invoke("eval", tmp_path, "--episodes", "1", "--env", "tests.fake_envs:point_factory").exit_code == 0


def test_1_registered_ids_stay_automatic(checkpoint):
    result = invoke("eval", checkpoint, "--episodes", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["env_id"] == "InvertedPendulum-v5"


# ----------------------------------------------------------------------------- 2. headless rendering


@pytest.mark.parametrize("option", ["--render", "--video"])
def test_2_headless_render_works_with_MUJOCO_GL_unset(checkpoint, option):
    video = checkpoint.parent / ("eval.mp4" if option == "--render" else "clip.gif")
    args = ["--render"] if option == "--render" else ["--video", video]
    done = ppo("eval", checkpoint, "--episodes", "1", "--frames", "4", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    frames = iio.imread(video, plugin="FFMPEG" if video.suffix == ".mp4" else None)
    assert frames.shape[0] == 4 and min(float(f.std()) for f in frames) > 5.0  # the scene, not blank frames


# ----------------------------------------------------------------------------- 3. one writer per run


def test_3_a_second_process_on_a_running_run_is_refused_with_the_holders_pid(tmp_path):
    assert invoke("train", POINT, "--total-steps", "1024", "--out", tmp_path, *SMALL).exit_code == 0
    run = tmp_path / "tests.fake_envs_PointEnv" / "default"
    first = start("train", "--resume", run, "--total-steps", "10000000", "--trust-env", "--quiet")
    try:
        wait_for_rows([run / "seed_0" / "progress.csv"], 6, first)
        for args in (["--resume", run], ["--resume", run, "--total-steps", "2048"],
                     ["--resume", run / "seed_0", "--total-steps", "20000000"]):
            result = invoke("train", *args, "--trust-env")
            assert result.exit_code == 2, result.output
            assert f"is in use by another ppo process (PID {first.pid})" in text(result)
    finally:
        os.killpg(first.pid, signal.SIGINT)
        output, _ = first.communicate(timeout=60)
    assert first.returncode == 130, output
    checkpoint_step, row_step = last_step(run / "seed_0")
    assert checkpoint_step == row_step  # the first writer's run is whole
    assert load_checkpoint(run / "seed_0" / "checkpoint.pt")["config"]["total_steps"] == 10000000


def test_3_a_fresh_start_never_overwrites_a_run_another_process_wrote(tmp_path):
    """A plan made before another process trained the folder (two benchmark scripts on one folder
    did this: a finished seed was trained again from step 0 and cut off by a signal)."""
    config = Config(env_id=POINT, total_steps=512, num_envs=1, num_steps=256, num_minibatches=4, update_epochs=1)
    seed_dir = tmp_path / "seed_0"
    seed_dir.mkdir()
    assert train(config, seed_dir).status == "finished"
    before = {p.name: p.read_bytes() for p in seed_dir.iterdir() if p.is_file()}
    with pytest.raises(RunExists, match="already holds a run") as refused:
        train(config, seed_dir)
    assert isinstance(refused.value, FolderBusy) and refused.value.folder == seed_dir and refused.value.pid is None
    assert {p.name: p.read_bytes() for p in seed_dir.iterdir() if p.is_file()} == before
    assert train(config.replace(total_steps=1024), seed_dir, resume=True).status == "finished"


def test_3_the_lock_is_per_folder_and_released_when_its_holder_ends(tmp_path):
    with FolderLock(tmp_path):
        holder = f"import fcntl, os; fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR); " \
                 f"fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"
        assert subprocess.run([sys.executable, "-c", holder], capture_output=True).returncode != 0
        config = Config(env_id=POINT, total_steps=256, num_envs=1, num_steps=128, num_minibatches=2)
        with pytest.raises(FolderBusy, match=f"PID {os.getpid()}"):
            train(config, tmp_path)
        result = run_one(SeedJob(config, tmp_path), lambda event: None)
        assert result.status == "failed" and "in use by another ppo process" in result.message
        assert not (tmp_path / "error.txt").exists()  # nothing written into the other writer's folder
    assert subprocess.run([sys.executable, "-c", holder], capture_output=True).returncode == 0


# ----------------------------------------------------------------------------- 4. seeds that never started


def test_4_resume_finishes_every_seed_the_run_was_created_with(tmp_path, monkeypatch):
    reference = invoke("train", POINT, "--seeds", "3", "--jobs", "1", "--total-steps", "1024", "--out", tmp_path,
                       "--run-name", "reference", *SMALL)
    assert reference.exit_code == 0
    interrupt_at_update(monkeypatch, 2)  # Ctrl-C during seed 0: seeds 1 and 2 never start
    stopped = invoke("train", POINT, "--seeds", "3", "--jobs", "1", "--total-steps", "1024", "--out", tmp_path,
                     "--run-name", "run", *SMALL)
    monkeypatch.undo()
    assert stopped.exit_code == 130
    run = tmp_path / "tests.fake_envs_PointEnv" / "run"
    assert json.loads((run / "run.json").read_text())["seeds"] == [0, 1, 2]
    assert not (run / "seed_2" / "checkpoint.pt").exists()
    resumed = invoke("train", "--resume", run, "--trust-env", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    for seed in (0, 1, 2):
        assert same_rows(run / f"seed_{seed}", run.parent / "reference" / f"seed_{seed}"), seed


# ----------------------------------------------------------------------------- 5. SIGTERM and SIGHUP


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_5_sigterm_and_sighup_save_the_last_iteration(tmp_path, signum, code):
    proc = start("train", POINT, "--seeds", "2", "--jobs", "2", "--total-steps", "10000000",
                 "--checkpoint-interval", "100000", "--out", tmp_path, *SMALL)  # no checkpoint before the signal
    run = tmp_path / "tests.fake_envs_PointEnv" / "default"
    wait_for_rows([run / f"seed_{k}" / "progress.csv" for k in (0, 1)], 3, proc)
    os.kill(proc.pid, signum)  # the launcher alone, as `kill`, `timeout` or a closed terminal do
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, output
    assert "Traceback" not in output
    for k in (0, 1):
        checkpoint_step, row_step = last_step(run / f"seed_{k}")
        assert checkpoint_step == row_step > 0


def test_5_sigterm_in_the_first_second_leaves_a_resumable_run(tmp_path):
    for delay in (0.3, 2.5):
        out = tmp_path / f"after_{delay}"
        proc = start("train", POINT, "--seeds", "2", "--jobs", "2", "--total-steps", "1024", "--out", out, *SMALL)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "Traceback" not in output, output
        run = out / "tests.fake_envs_PointEnv" / "default"
        if run.exists():
            done = ppo("train", "--resume", run, "--trust-env", "--quiet")
            assert done.returncode == 0, done.stdout + done.stderr
            assert all(last_step(run / f"seed_{k}") == (1024, 1024) for k in (0, 1))
        else:  # stopped while loading or planning: no file at all
            assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_5_a_signal_while_the_cli_loads_exits_with_its_code_and_no_traceback(signum, code):
    """The signal arrives during ``import ppo_cli.cli`` (torch's import takes a second or more)."""
    script = ("import builtins, os, sys; import ppo_cli.__main__ as m; real = builtins.__import__\n"
              "def imp(name, *a, **k):\n"
              f"    if name == 'ppo_cli.cli': os.kill(os.getpid(), {int(signum)})\n"
              "    return real(name, *a, **k)\n"
              "builtins.__import__ = imp; sys.argv = ['ppo', 'envs']; m.run()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_5_a_signal_while_the_process_shuts_down_exits_with_its_code_at_once(signum, code):
    """The command has returned and the interpreter waits for a thread that never ends; the signal
    arrives then. Before, a SIGTERM there printed a traceback and exited 0 (and in the interpreter's
    teardown after the last atexit callback it was dropped or killed the process: -15)."""
    script = ("import os, sys, threading, time; import ppo_cli.__main__ as m\n"
              "def late():\n"
              "    while threading.main_thread().is_alive(): time.sleep(0.01)\n"
              f"    os.kill(os.getpid(), {int(signum)}); time.sleep(120)\n"
              "threading.Thread(target=late).start(); sys.argv = ['ppo', 'envs']; m.run()")
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - began < 60 and "Gymnasium" in result.stdout, result.stdout  # its output kept


@pytest.mark.parametrize("args, code", [(["envs"], 0), (["eval", "no-such.pt"], 2), (["no-such-command"], 2)])
def test_5_without_a_signal_the_process_exits_with_the_commands_code_and_output(args, code):
    """It leaves by ``os._exit`` in the last atexit callback: the code and every line printed (to
    a pipe, so block-buffered) must still be the command's."""
    result = ppo(*args)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    runner = CliRunner().invoke(cli, args)
    assert runner.exit_code == code and result.stdout == runner.stdout


# ----------------------------------------------------------------------------- 6. orphans


def test_6_workers_stop_when_their_launcher_is_killed(tmp_path):
    proc = start("train", POINT, "--seeds", "2", "--jobs", "2", "--total-steps", "10000000",
                 "--checkpoint-interval", "100000", "--out", tmp_path, *SMALL)
    run = tmp_path / "tests.fake_envs_PointEnv" / "default"
    wait_for_rows([run / f"seed_{k}" / "progress.csv" for k in (0, 1)], 3, proc)
    workers = [int((run / f"seed_{k}" / ".lock").read_text()) for k in (0, 1)]
    assert proc.pid not in workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived its launcher"
    for k in (0, 1):  # they saved on the way out, so nothing after the last row is lost
        checkpoint_step, row_step = last_step(run / f"seed_{k}")
        assert checkpoint_step == row_step > 0


# ----------------------------------------------------------------------------- 7. Ctrl-C at start-up


def test_7_ctrl_c_in_the_first_seconds_is_clean_and_resumable(tmp_path):
    for delay in (0.5, 1.5, 3.0, 4.5):
        out = tmp_path / f"after_{delay}"
        proc = start("train", POINT, "--seeds", "2", "--jobs", "2", "--total-steps", "1024", "--out", out, *SMALL)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)  # as the terminal sends it: to the whole foreground group
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode in (0, 130), output
        assert "Traceback" not in output and "failed" not in output, output
        run = out / "tests.fake_envs_PointEnv" / "default"
        if run.exists():
            done = ppo("train", "--resume", run, "--trust-env", "--quiet")
            assert done.returncode == 0, done.stdout + done.stderr
            assert all(last_step(run / f"seed_{k}") == (1024, 1024) for k in (0, 1))


def test_7_subprocesses_started_by_imports_start_with_ctrl_c_blocked():
    """Importing mujoco runs glfw's version check as a Python child in the terminal's process group;
    a Ctrl-C that reached it printed its KeyboardInterrupt traceback (found by CI)."""
    code = """
import signal, sys
seen = []
def hook(event, args):
    if event == "subprocess.Popen":
        seen.append(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
sys.addaudithook(hook)
import ppo_cli.envs, ppo_cli.trainer, ppo_cli.evaluate
print(seen)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env_without_display())
    assert done.returncode == 0, done.stderr
    seen = eval(done.stdout.strip().splitlines()[-1])
    assert seen and all(seen), seen  # glfw's check ran, with SIGINT blocked


# ----------------------------------------------------------------------------- 8. damaged CSV lines


def test_8_resume_keeps_every_valid_row_and_reports_the_damaged_ones(tmp_path):
    assert invoke("train", POINT, "--total-steps", "2048", "--out", tmp_path, *SMALL).exit_code == 0
    run = tmp_path / "tests.fake_envs_PointEnv" / "default"
    progress = run / "seed_0" / "progress.csv"
    lines = progress.read_text().splitlines(keepends=True)
    assert len(lines) == 9  # header and 8 rows, all before the checkpoint
    damaged = list(lines)
    damaged.insert(5, "\n")  # a blank line at row 5
    damaged.insert(8, "7\x00\x00,garbage\n")  # and a damaged one further down
    progress.write_text("".join(damaged))
    resumed = invoke("train", "--resume", run, "--total-steps", "3072", "--trust-env", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert "dropped 2 damaged line(s) of progress.csv (line 6, 9)" in text(resumed)
    after = progress.read_text().splitlines(keepends=True)
    assert after[:9] == lines  # not one of the 8 valid rows was lost
    assert pd.read_csv(progress)["iteration"].tolist() == list(range(1, 13))


def test_8_truncate_keeps_valid_rows_in_order_and_drops_only_bad_ones(tmp_path):
    path = tmp_path / "log.csv"
    rows = ["global_step,a,b\n", "10,1.5,\n", "\n", "20,x,1\n", "30,3,3\n", "40,4\n", "50,5,5\n", "60,6,6\n",
            "70,7,7"]
    path.write_text("".join(rows))
    assert _truncate(path, ("global_step", "a", "b"), 50) == [3, 4, 6]
    assert path.read_text() == "global_step,a,b\n10,1.5,\n30,3,3\n50,5,5\n"
    assert valid_row("10,1e-3,\n", 3) and not valid_row("10,1e-3,", 3) and not valid_row("-1,2,3\n", 3)


# ----------------------------------------------------------------------------- 9. checkpoint contents


def _nan_weight(state):
    state["model"]["weights.0"][0, 0, 0] = math.nan


def _inf_log_std(state):
    state["model"]["log_std"][0] = math.inf


def _nan_obs_mean(state):
    state["obs_rms"]["mean"][0] = math.nan


def _negative_var(state):
    state["obs_rms"]["var"][0] = -1.0


def _negative_count(state):
    state["obs_rms"]["count"] = -5.0


def _huge_hidden_sizes(state):
    state["config"]["hidden_sizes"] = [20000, 20000, 20000]


def _wrong_obs_dim(state):
    state["spaces"]["obs_dim"] = 7


def _float_step(state):
    state["global_step"] = 1.5


def _missing_layer(state):
    del state["model"]["biases.1"]


def _float_envs(state):
    state["config"]["num_envs"] = 1.5  # passed `< 1`, then failed deep in training


def _bool_seed(state):
    state["config"]["seed"] = True


def _unknown_activation(state):
    state["config"]["activation"] = "__import__('os')"  # a name, never evaluated


@pytest.mark.parametrize("edit, message", [
    (_nan_weight, "model.weights.0 holds NaN or infinite values"),
    (_inf_log_std, "model.log_std holds NaN or infinite values"),
    (_nan_obs_mean, "obs_rms.mean holds NaN or infinite values"),
    (_negative_var, "obs_rms.var holds negative values"),
    (_negative_count, "obs_rms.count must be a finite number >= 0"),
    (_huge_hidden_sizes, "its model tensors are not those of hidden_sizes [20000, 20000, 20000]"),
    (_wrong_obs_dim, "has shape (2, 4, 16), its config and spaces need (2, 7, 16)"),
    (_float_step, "global_step must be an integer >= 0, got 1.5"),
    (_missing_layer, "its model tensors are not those of hidden_sizes [16, 16]"),
    (_float_envs, "num_envs must be a positive integer, got 1.5"),
    (_bool_seed, "seed must be an integer >= 0, got True"),
    (_unknown_activation, "activation must be tanh, relu, elu, got \"__import__('os')\""),
])
def test_9_eval_and_resume_check_the_contents_before_building_anything(checkpoint, edit, message):
    craft(checkpoint, edit)
    started = time.perf_counter()
    for args in (["eval", checkpoint, "--episodes", "1"], ["train", "--resume", checkpoint.parent, "--total-steps", "1024"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "is a damaged or crafted ppo checkpoint" in text(result) and message in text(result), result.output
    assert time.perf_counter() - started < 10  # refused, not built (20000-wide layers would take minutes)
    assert not (checkpoint.parent / "eval.json").exists()


def test_9_resume_checks_the_training_state_too(checkpoint):
    def nan_moment(state):
        state["optimizer"]["state"][0]["exp_avg"][3] = math.nan
    craft(checkpoint, nan_moment)
    assert invoke("eval", checkpoint, "--episodes", "1").exit_code == 0  # evaluation does not read it
    result = invoke("train", "--resume", checkpoint.parent)
    assert result.exit_code == 2 and "optimizer exp_avg does not fit the model or is not finite" in text(result)


@pytest.mark.parametrize("rng", [{"bit_generator": "seed"}, {"random_state": {"state": 1}}, "PCG64", 7])
def test_9_resume_checks_each_environments_saved_random_state(checkpoint, rng):
    def bad_start(state):
        state["envs"]["episode_start"][0] = {"seed": None, "rng": rng}
    craft(checkpoint, bad_start)
    result = invoke("train", "--resume", checkpoint.parent)
    assert result.exit_code == 2 and "envs.episode_start[0] is not a seed or a generator state" in text(result)


@pytest.mark.parametrize("first", [torch.ones(5, dtype=torch.bool), torch.zeros(1), [True], "yes"])
def test_9_resume_checks_which_environments_are_in_their_first_episode(checkpoint, first):
    def bad_first(state):
        state["envs"]["first"] = first
    craft(checkpoint, bad_first)
    result = invoke("train", "--resume", checkpoint.parent)
    assert result.exit_code == 2, result.output
    assert "envs.first must hold one boolean for each of the 1 environments" in text(result)


def _record(run: Path, **changes) -> str:
    record = json.loads((run / "run.json").read_text())
    record.update(changes)
    return json.dumps(record)


@pytest.mark.parametrize("damage, message", [
    (lambda run: "{", "is not readable JSON"),
    (lambda run: '{"a": 1}', "is not a ppo run record (no 'ppo_cli.run' format marker)"),
    (lambda run: _record(run, seeds=2 ** 70), "'seeds' must be a list of distinct seeds (integers >= 0), got 1180"),
    (lambda run: _record(run, env_id=[1]), "'config' must be the run's config, for env_id [1]"),
])
def test_9_a_damaged_run_json_is_one_error_for_resume_and_eval(pendulum_run, tmp_path, damage, message):
    """Before, ``--resume`` read run.json for its lock check outside the error handling: a traceback, exit 1."""
    run = tmp_path / "run"
    shutil.copytree(pendulum_run, run)
    (run / "run.json").write_text(damage(run))
    for args in (["train", "--resume", run], ["eval", run, "--episodes", "1"]):
        result = invoke(*args)
        assert result.exit_code == 2 and message in text(result), result.output
    assert invoke("diagnose", run).exit_code == 0  # reads the seed folders' rows, which are intact


# ----------------------------------------------------------------------------- 10. atomic, well-placed outputs


def test_10_a_failed_plot_leaves_the_previous_figure(pendulum_run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    out = tmp_path / "fig.png"
    assert invoke("plot", pendulum_run, "--out", out).exit_code == 0
    before = out.read_bytes()

    def disk_full(self, f, **kwargs):
        f.write(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    result = invoke("plot", pendulum_run, "--out", out)
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "summary.csv"]  # no temporary file left


def test_10_plot_out_names_a_file_or_a_folder_and_never_writes_beside_it(pendulum_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("plot", pendulum_run, "--out", "newdir/").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "newdir").iterdir()) == ["learning_curves.png", "summary.csv"]
    assert invoke("plot", pendulum_run, "--out", "other").exit_code == 0
    assert (tmp_path / "other" / "learning_curves.png").is_file() and not (tmp_path / "other.png").exists()
    result = invoke("plot", pendulum_run, "--out", "/dev/full")
    assert result.exit_code == 2 and "/dev/full is neither a folder nor a regular file" in text(result)
    assert not Path("/dev/full.png").exists()


def test_10_every_file_of_a_run_is_written_through_the_atomic_writer(tmp_path, monkeypatch):
    replaced = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(Path(dst).name), real(src, dst)))
    assert invoke("train", "inverted-pendulum", "--total-steps", "512", "--out", tmp_path, *SMALL).exit_code == 0
    seed_dir = tmp_path / "InvertedPendulum-v5" / "default" / "seed_0"
    assert invoke("eval", seed_dir, "--episodes", "1", "--video", tmp_path / "v.gif", "--frames", "2").exit_code == 0
    assert invoke("plot", seed_dir.parent).exit_code == 0
    assert {"run.json", "config.json", "checkpoint.pt", "eval.json", "v.gif", "learning_curves.png",
            "summary.csv"} <= set(replaced)


# ----------------------------------------------------------------------------- 11. one Error: line, exit 2


def test_11_a_run_name_too_long_or_not_a_name_creates_nothing(tmp_path):
    for name in ("x" * 300, "a/b", ".."):
        result = invoke("train", "pendulum", "--out", tmp_path / "out", "--run-name", name, *SMALL)
        assert result.exit_code == 2 and "Invalid value for '--run-name'" in result.output, result.output
        assert not (tmp_path / "out").exists()  # not even OUT/<env>/


def test_11_the_run_name_taken_between_check_and_create_is_one_error(tmp_path, monkeypatch):
    real = runs.check_run_name

    def another_process_gets_there_first(env_dir, run_name):
        real(env_dir, run_name)
        (env_dir / run_name).mkdir(parents=True)

    monkeypatch.setattr(runs, "check_run_name", another_process_gets_there_first)
    result = invoke("train", "pendulum", "--out", tmp_path, "--run-name", "mine", "--total-steps", "512", *SMALL)
    assert result.exit_code == 2 and "mine already exists" in text(result)
    assert list((tmp_path / "Pendulum-v1" / "mine").iterdir()) == []  # the other process's folder, untouched


def test_11_an_environment_that_calls_sys_exit_is_an_error_not_a_silent_success(tmp_path):
    for env in ("sys:exit", "os:fork"):
        result = invoke("train", env, "--out", tmp_path, *SMALL)
        assert result.exit_code == 2 and "is not a class or factory (got a built-in function)" in text(result)
    result = invoke("train", "tests.fake_envs:exits", "--out", tmp_path, *SMALL)
    assert result.exit_code == 2 and "called sys.exit(0) instead of returning an environment" in text(result)


def test_11_an_environment_whose_sizes_do_not_fit_the_policy(checkpoint):
    craft(checkpoint, set_env("InvertedDoublePendulum-v5"))
    result = invoke("eval", checkpoint, "--episodes", "1")
    assert result.exit_code == 2
    assert "InvertedDoublePendulum-v5 has 9 observations and 1 continuous actions; the policy was trained on 4" in \
        text(result)
    result = invoke("eval", checkpoint.parent, "--episodes", "1", "--env", "hopper")
    assert result.exit_code == 2 and "Hopper-v5 has 11 observations and 3 continuous actions" in text(result)


def test_11_fps_must_be_a_frame_rate(checkpoint, tmp_path):
    for fps in ("1e-300", "0", "1e9", "nan"):
        result = invoke("eval", checkpoint, "--video", tmp_path / "v.gif", "--fps", fps)
        assert result.exit_code == 2 and "Invalid value for '--fps'" in result.output, fps


def test_11_read_only_folders_are_refused_before_any_work(checkpoint, tmp_path):
    disk = tmp_path / "ro"
    mount_tmpfs(disk)
    try:
        shutil.copytree(checkpoint.parent, disk / "seed_0")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = invoke("eval", disk / "seed_0", "--episodes", "1")
        assert result.exit_code == 2 and "Read-only file system" in text(result), result.output
        result = invoke("train", "--resume", disk / "seed_0", "--total-steps", "2048")
        assert result.exit_code == 2 and "cannot write to" in text(result) and "Read-only" in text(result)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_11_a_disk_that_fills_up_during_training_fails_the_seeds_cleanly(small_disk):
    proc = start("train", POINT, "--seeds", "2", "--jobs", "2", "--total-steps", "100000", "--checkpoint-interval",
                 "5", "--out", small_disk, *SMALL)
    run = small_disk / "tests.fake_envs_PointEnv" / "default"
    wait_for_rows([run / f"seed_{k}" / "progress.csv" for k in (0, 1)], 12, proc)
    fill(small_disk)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "Traceback" not in output and output.count("No space left on device") >= 2, output
    for k in (0, 1):
        seed_dir = run / f"seed_{k}"
        load_checkpoint(seed_dir / "checkpoint.pt")  # whole
        pd.read_csv(seed_dir / "progress.csv")  # readable
        assert not list(seed_dir.glob(".*tmp*")) and not (seed_dir / "error.txt").exists()
    (small_disk / "filler").unlink()
    target = max(last_step(run / f"seed_{k}")[0] for k in (0, 1)) + 4 * 256
    done = ppo("train", "--resume", run, "--total-steps", target, "--trust-env", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(last_step(run / f"seed_{k}") == (target, target) for k in (0, 1))


def test_11_a_full_disk_during_eval_is_one_error(small_disk, checkpoint):
    shutil.copytree(checkpoint.parent, small_disk / "seed_0")
    fill(small_disk)
    done = ppo("eval", small_disk / "seed_0", "--episodes", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: could not write the result next to")
    assert "No space left on device" in done.stderr and not (small_disk / "seed_0" / "eval.json").exists()


def test_11_full_disk_during_eval_without_a_mount(checkpoint, monkeypatch):
    from ppo_cli import evaluate

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(evaluate, "atomic_write_text", full)
    result = invoke("eval", checkpoint, "--episodes", "1")
    assert result.exit_code == 2 and "could not write the result next to" in text(result)


# ----------------------------------------------------------------------------- 12. hung environments


@pytest.mark.parametrize("env, stubborn", [("tests.fake_envs:HangingEnv", False),
                                           ("tests.fake_envs:StubbornHangingEnv", True)])
def test_12_step_timeout_fails_a_hung_seed_and_keeps_its_state(tmp_path, env, stubborn):
    started = time.monotonic()
    done = ppo("train", env, "--total-steps", "2048", "--num-steps", "64", "--step-timeout", "1", "--out", tmp_path,
               "--num-envs", "1", "--num-minibatches", "4", "--update-epochs", "1", "--hidden-sizes", "8", "--quiet",
               timeout=90)
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 60
    output = " ".join((done.stdout + done.stderr).split())
    assert "an environment step did not return within --step-timeout 1 s" in output
    assert ("did not stop when interrupted" in output) == stubborn
    seed_dir = next(tmp_path.glob("*/default/seed_0"))
    assert load_checkpoint(seed_dir / "checkpoint.pt")["iteration"] == 4  # 300 steps in: iteration 5 hung
    assert "Traceback" not in done.stderr


def test_12_step_timeout_must_be_positive(tmp_path):
    result = invoke("train", "pendulum", "--step-timeout", "0", "--out", tmp_path, *SMALL)
    assert result.exit_code == 2 and "Invalid value for '--step-timeout'" in result.output


# ----------------------------------------------------------------------------- the fault-injection script


def test_the_fault_injection_script_runs_a_round(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--rounds", "1", "--seed", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=env_without_display())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "rounds=1 identical=1 lost_rows=0 orphans=0", done.stdout
