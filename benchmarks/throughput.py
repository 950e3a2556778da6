"""Training throughput of ``ppo`` against Stable-Baselines3, side by side on this machine.

    pip install -c constraints.txt -e ".[bench]"      # Stable-Baselines3, benchmark only
    python benchmarks/throughput.py --steps 102400 --repeats 2

Both train Hopper-v4 for the same number of steps with the same settings: 1 environment, 2048
steps per rollout, 10 epochs, 32 minibatches (64 samples), Adam 3e-4 annealed linearly, gamma 0.99,
lambda 0.95, clip 0.2 (value clip 0.2 too), vf 0.5, grad-norm 0.5, 64x64 tanh actor and critic,
orthogonal init, observation and reward normalisation (SB3: ``VecNormalize``). Each run is its own
process and the two libraries alternate, so drift of the machine hits both. torch runs with one
thread in both (the faster setting for 64-sample minibatches on a CPU). Both are timed from building
the environment to the end of training: ``ppo``'s ``train()`` call, and SB3's environment, ``PPO()``
and ``learn()``. Neither timing includes imports: each child imports its library, and
``torch._dynamo``, before its clock starts (creating any ``torch.optim`` optimizer imports
``torch._dynamo`` on first use, ~1.5 s here, once per process, for both libraries alike).

These classic settings are pinned (``CLASSIC``, ``ppo train --preset classic``): ``ppo``'s own
defaults differ (64 environments x 32 steps; see docs/benchmarks.md), and are measured once
too (``ppo defaults``, also with ``--backend envpool``).

Afterwards, once each: ``ppo --backend envpool --num-envs 16 --num-steps 512`` (needs the ``fast``
extra), ``ppo``'s defaults with both backends, and two ``ppo`` seeds at once (``--seeds 2`` on 2
cores) for the total step rate, compared with one seed run just before them (the machine's speed
drifts, so the pair is compared with its neighbour, not with the medians of earlier runs).
The update paths (``--update fused|autograd``, ``--compile``) are timed by
``benchmarks/update_speed.py``.

Prints each run's steps/s, the medians, their ratios, the raw ``gymnasium.make`` step rate, and
``ppo``'s split between rollout and update (microseconds per environment step). The last line is
machine-readable: ``ratio_vs_sb3=... ppo_sps=... sb3_sps=... env_sps=...``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ppo_cli.config import Config, preset

ENV_ID = "Hopper-v4"


# SB3's settings, pinned (`--preset classic`): ppo's own defaults (64 envs x 32 steps, recomputed
# advantages, ...) differ
CLASSIC = {**preset("classic"), "num_minibatches": 32, "update_epochs": 10}


def run_ppo(steps: int, **options: object) -> dict[str, float]:
    import torch
    import torch._dynamo  # noqa: F401  (see the module docstring: imports are not timed)

    from ppo_cli.trainer import train

    torch.set_num_threads(1)
    rows: list[dict] = []
    config = Config(env_id=ENV_ID, total_steps=steps, checkpoint_interval=10_000,
                    **{**CLASSIC, **options})
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        train(config, Path(folder), on_iteration=rows.append)
        wall = time.perf_counter() - start
    done = rows[-1]["global_step"]
    update = sum(r["update_time_s"] for r in rows)
    iteration_time = rows[-1]["time_s"]  # from the start of train(), environments built
    return {"sps": done / wall, "update_us_per_step": update / done * 1e6,
            "rollout_us_per_step": (iteration_time - update) / done * 1e6, "wall_s": wall}


def run_sb3(steps: int) -> dict[str, float]:
    import gymnasium as gym
    import torch
    import torch._dynamo  # noqa: F401  (see the module docstring: imports are not timed)
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    start = time.perf_counter()
    env = VecNormalize(DummyVecEnv([lambda: gym.make(ENV_ID)]), gamma=0.99)
    model = PPO("MlpPolicy", env, n_steps=2048, batch_size=64, n_epochs=10,
                learning_rate=lambda progress: 3e-4 * progress, gamma=0.99, gae_lambda=0.95, clip_range=0.2,
                clip_range_vf=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, device="cpu", seed=0,
                policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh,
                               "ortho_init": True, "log_std_init": 0.0})
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    return {"sps": model.num_timesteps / wall, "wall_s": wall}


def run_env(steps: int) -> dict[str, float]:
    import gymnasium as gym
    import numpy as np

    env = gym.make(ENV_ID)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, env.action_space.shape[0]))
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return {"sps": steps / (time.perf_counter() - start)}


ENVPOOL16 = {"backend": "envpool", "num_envs": 16, "num_steps": 512}
DEFAULTS = {name: getattr(Config(env_id=ENV_ID), name) for name in CLASSIC}  # ppo's shipped defaults
RUNNERS = {"ppo_defaults": lambda steps: run_ppo(steps, **DEFAULTS),
           "ppo_defaults_envpool": lambda steps: run_ppo(steps, backend="envpool", **DEFAULTS),
           "ppo": run_ppo, "sb3": run_sb3, "env": run_env,
           "ppo_envpool16": lambda steps: run_ppo(steps, **ENVPOOL16)}


def child(kind: str, steps: int, parallel: int = 1) -> list[dict[str, float]]:
    """Run ``parallel`` copies of one measurement at once, each a fresh process; their JSON results."""
    procs = [subprocess.Popen([sys.executable, __file__, "--child", kind, "--steps", str(steps)],
                              stdout=subprocess.PIPE, text=True) for _ in range(parallel)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{kind} run failed with exit code {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=102_400, help="training steps per run (>= 100k)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per library, alternating")
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(RUNNERS[args.child](args.steps)))
        return

    kinds = ("ppo", "sb3")
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        for kind in kinds:
            result = child(kind, args.steps)[0]
            results[kind].append(result)
            print(f"run {repeat + 1} {kind:>11}: {result['sps']:7.0f} steps/s ({result['wall_s']:.1f} s)", flush=True)
    many = {kind: child(kind, args.steps)[0]["sps"]
            for kind in ("ppo_envpool16", "ppo_defaults", "ppo_defaults_envpool")}
    for kind, value in many.items():
        print(f"{kind:>21}: {value:7.0f} steps/s", flush=True)
    one_sps = child("ppo", args.steps)[0]["sps"]  # right before the pair: the machine's speed drifts
    two_sps = sum(r["sps"] for r in child("ppo", args.steps, parallel=2))
    print(f"1 seed              ppo: {one_sps:7.0f} steps/s (just before the pair)", flush=True)
    print(f"2 seeds at once     ppo: {two_sps:7.0f} steps/s in total", flush=True)
    env = child("env", 20_000)[0]
    sps = {kind: statistics.median(r["sps"] for r in results[kind]) for kind in kinds}
    rollout = statistics.median(r["rollout_us_per_step"] for r in results["ppo"])
    update = statistics.median(r["update_us_per_step"] for r in results["ppo"])
    print(f"\n{ENV_ID}, {args.steps} steps, medians of {args.repeats} runs each")
    print(f"  {'ppo':<24} {sps['ppo']:7.0f} steps/s  (rollout {rollout:.0f} us/step, update {update:.0f} us/step)")
    print(f"  {'Stable-Baselines3 PPO':<24} {sps['sb3']:7.0f} steps/s")
    print(f"  {'gymnasium.make().step':<24} {env['sps']:7.0f} steps/s  (random actions)")
    print(f"  {'ppo, 2 seeds at once':<24} {two_sps:7.0f} steps/s total ({two_sps / one_sps:.2f}x one seed run just "
          f"before it, {one_sps:.0f})")
    print(f"  {'ppo, envpool, 16 envs':<24} {many['ppo_envpool16']:7.0f} steps/s  (--num-steps 512)")
    print(f"  {'ppo defaults (64 envs)':<24} {many['ppo_defaults']:7.0f} steps/s  "
          f"({many['ppo_defaults_envpool']:.0f} with --backend envpool)")
    print(f"  ratio ppo / SB3          {sps['ppo'] / sps['sb3']:7.2f}")
    print(f"ratio_vs_sb3={sps['ppo'] / sps['sb3']:.2f} ppo_sps={sps['ppo']:.0f} sb3_sps={sps['sb3']:.0f} "
          f"two_seed_sps={two_sps:.0f} two_seed_speedup={two_sps / one_sps:.2f} "
          f"envpool16_sps={many['ppo_envpool16']:.0f} "
          f"defaults_sps={many['ppo_defaults']:.0f} "
          f"defaults_envpool_sps={many['ppo_defaults_envpool']:.0f} env_sps={env['sps']:.0f}")


if __name__ == "__main__":
    main()
