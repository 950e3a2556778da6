"""Time one PPO update (10 epochs x 32 minibatches of 64) on a fixed Hopper-sized batch.

    python benchmarks/update_speed.py

Prints microseconds per minibatch (median of 7 updates) for each update path: ``--update fused``
(the default for Gaussian policies), ``--update autograd`` (composed torch operations) and
``--update autograd --compile`` (``torch.compile`` of that loss; its compile time shows in the
first update). Used to measure changes to ``ppo_cli.update.ppo_update`` before and after, in one
run on the same machine; ``docs/performance.md`` quotes it.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ppo_cli.agent import ActorCritic
from ppo_cli.config import Config
from ppo_cli.optim import make_optimizer
from ppo_cli.update import make_loss_fn, ppo_update


def measure(update: str, compile: bool = False, repeats: int = 7) -> float:
    torch.set_num_threads(1)
    config = Config(env_id="Hopper-v5", update=update, compile=compile)
    agent = ActorCritic(11, 3, config.hidden_sizes, seed=0)
    optimizer = make_optimizer(agent, config)
    loss_fn = make_loss_fn(agent, config, optimizer)
    g = torch.Generator().manual_seed(0)
    n = config.batch_size
    batch = {"obs": torch.randn(n, 11, generator=g), "actions": torch.randn(n, 3, generator=g),
             "values": torch.randn(n, generator=g), "advantages": torch.randn(n, generator=g),
             "returns": torch.randn(n, generator=g)}
    with torch.no_grad():
        batch["logprobs"] = agent.evaluate(batch["obs"], batch["actions"])[0]
    rng = np.random.default_rng(0)
    planned = config.update_epochs * config.num_minibatches
    start = time.perf_counter()
    ppo_update(agent, optimizer, batch, config, rng, loss_fn)  # warm-up (and compilation)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ppo_update(agent, optimizer, batch, config, rng, loss_fn)
        times.append((time.perf_counter() - start) / planned * 1e6)
    median = statistics.median(times)
    label = update + (" --compile" if compile else "")
    print(f"--update {label:<18}: {median:5.0f} us per minibatch of {config.minibatch_size} "
          f"(median of {repeats}; first update {first:.1f} s)")
    return median


if __name__ == "__main__":
    fused = measure("fused")
    autograd = measure("autograd")
    compiled = measure("autograd", compile=True)
    print(f"autograd / fused: {autograd / fused:.2f}; compiled autograd / fused: {compiled / fused:.2f}; "
          f"compiled autograd / autograd: {compiled / autograd:.2f}")
