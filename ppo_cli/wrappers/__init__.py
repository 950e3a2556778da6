"""Observation and reward filters (running statistics), applied to batches of environments."""

from ppo_cli.wrappers.normalize import ObservationNormalizer, RewardNormalizer, RunningMeanStd

__all__ = ["ObservationNormalizer", "RewardNormalizer", "RunningMeanStd"]
