"""ppo: train, evaluate and diagnose PPO agents on continuous-control tasks."""

from ppo_cli._version import __version__

__all__ = ["__version__"]
