import os

# MuJoCo fixes its OpenGL backend at import: tests render off-screen (EGL) in this process.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import pytest  # noqa: E402

from ppo_cli.config import Config  # noqa: E402

LEARN = Config(env_id="InvertedPendulum-v5", total_steps=20480, num_steps=1024, num_minibatches=32)
LEARN_THRESHOLD = 500.0  # max 1000; a random policy scores ~5-10


@pytest.fixture(scope="session")
def trained_pendulum(tmp_path_factory):
    """One short InvertedPendulum run shared by the learning and evaluation tests."""
    from ppo_cli.trainer import train

    run_dir = tmp_path_factory.mktemp("pendulum") / "seed_0"
    run_dir.mkdir()
    return train(LEARN, run_dir)
