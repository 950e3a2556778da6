"""Time one PPO update (10 epochs x 32 minibatches of 64) on a fixed Hopper-sized batch.

    python benchmarks/update_speed.py

Prints microseconds per minibatch (median of 7 updates). Used to measure changes to
``ppo_cli.trainer.ppo_update`` before and after, in one run on the same machine.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ppo_cli.agent import ActorCritic
from ppo_cli.config import Config
from ppo_cli.trainer import make_optimizer, ppo_update


def main(repeats: int = 7) -> float:
    torch.set_num_threads(1)
    config = Config(env_id="Hopper-v5")
    agent = ActorCritic(11, 3, config.hidden_sizes, seed=0)
    optimizer = make_optimizer(agent, config)
    g = torch.Generator().manual_seed(0)
    n = config.batch_size
    batch = {"obs": torch.randn(n, 11, generator=g), "actions": torch.randn(n, 3, generator=g),
             "values": torch.randn(n, generator=g), "advantages": torch.randn(n, generator=g),
             "returns": torch.randn(n, generator=g)}
    with torch.no_grad():
        batch["logprobs"] = agent.evaluate(batch["obs"], batch["actions"])[0]
    rng = np.random.default_rng(0)
    planned = config.update_epochs * config.num_minibatches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ppo_update(agent, optimizer, batch, config, rng)
        times.append((time.perf_counter() - start) / planned * 1e6)
    median = statistics.median(times)
    print(f"ppo_update: {median:.0f} us per minibatch of {config.minibatch_size} (median of {repeats})")
    return median


if __name__ == "__main__":
    main()
