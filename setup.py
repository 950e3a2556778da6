"""Packaging for ``ppo``: one distribution, one console script."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "ppo_cli" / "_version.py").read_text(), version)

setup(
    name="ppo-cli",
    version=version["__version__"],
    description="Train, evaluate and diagnose PPO agents on continuous-control tasks.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ppo_cli", "ppo_cli.*"]),
    install_requires=[
        "torch>=2.2",
        "gymnasium[mujoco]>=1.0",
        "mujoco>=3.0",
        "numpy>=1.24",
        "click>=8.1",
        "rich>=13",
        "threadpoolctl>=3.1",  # one BLAS thread per training process (ppo_cli.trainer)
        "pandas>=2.0",
        "seaborn>=0.13",
        "imageio>=2.28",
        "imageio-ffmpeg>=0.4.8",
    ],
    extras_require={
        "test": ["pytest>=7"],
        "fast": ["envpool>=1.2"],  # --backend envpool (C++ vectorised MuJoCo)
        "ray": ["ray>=2.9"],  # ppo sweep --ray (an existing Ray cluster)
        "tensorboard": ["tensorboard>=2.14"],  # ppo train --tensorboard
        # dmc:domain-task names; dm-control 1.0.50 fails on mujoco 4 (MjModel has no flex_vertedge)
        "dmc": ["shimmy[dm-control]>=2.0", "mujoco>=3.2,<4"],
        "bench": ["stable-baselines3>=2.3"],
    },
    entry_points={"console_scripts": ["ppo=ppo_cli.__main__:run"]},
)
