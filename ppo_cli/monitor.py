"""What a run records beside its training: evaluations (and the best policy), videos, TensorBoard.

* ``--eval-interval N``: every N iterations and at the end, the current policy plays
  ``--eval-episodes`` episodes deterministically on an environment of its own, with a frozen copy
  of the observation statistics and raw rewards, exactly as ``ppo eval`` plays them
  (:func:`ppo_cli.evaluate.run_episodes`, the one evaluation function), from the reset seed
  :func:`eval_seed` (so ``ppo eval --seed`` on the same checkpoint gives the same returns). One row
  of ``evaluations.csv`` per evaluation (flushed; kept up to the checkpoint on resume); the
  checkpoint of the best mean so far is ``best.pt`` (same format, same atomic write).
* ``--video-interval N``: every N iterations, a clip of the first episode (at most
  :data:`VIDEO_FRAMES` frames) of the deterministic policy, off-screen, into ``videos/``, with
  ``ppo eval --render``'s renderer choice.
* ``--tensorboard``: every ``progress.csv`` column (``progress/<column>``) and every evaluation
  (``eval/<column>``) as TensorBoard scalars in the seed folder; the CSVs stay the record, and a
  TensorBoard error never stops training (it is reported once and recording stops).

None of it touches the training's environments or random generators: a run trains the same with
or without them (tested). It runs in the training process between iterations, before the
iteration's checkpoint, so an interrupted and resumed run records the same rows.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ppo_cli.checkpoint import save_checkpoint
from ppo_cli.config import Config
from ppo_cli.diagnostics import CsvLog
from ppo_cli.layout import BEST_FILE, EVALUATIONS_FILE, VIDEOS_DIR
from ppo_cli.wrappers import ObservationNormalizer

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("global_step", "mean", "std", "min", "max", "episodes", "time_s")
"""``evaluations.csv``: the raw returns of one evaluation's episodes, summarised."""

EVAL_SEED_OFFSET = 1_000_000
VIDEO_FRAMES = 300  # a clip during training: at most this many frames of the first episode


def eval_seed(seed: int) -> int:
    """The first reset seed of every evaluation of training seed ``seed`` (training's environments are
    seeded from ``SeedSequence(seed)``, never with this)."""
    return EVAL_SEED_OFFSET + seed


def frozen_filter(obs_filter: ObservationNormalizer) -> ObservationNormalizer:
    """A copy of the observation filter that does not learn (evaluation must not change the statistics)."""
    copy = ObservationNormalizer(obs_filter.rms.mean.shape, obs_filter.clip, enabled=obs_filter.enabled, training=False)
    copy.load_state_dict(obs_filter.state_dict())
    return copy


class Monitor:
    """The recorders a config asks for; :meth:`after_iteration` is called after each iteration's row."""

    def __init__(self, config: Config, run_dir: Path, resume_step: int | None) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.eval_env = self.video_env = None
        self.log: CsvLog | None = None
        self.best = -math.inf
        self.latest: float | None = None
        if config.eval_interval:
            self.log = CsvLog(self.run_dir / EVALUATIONS_FILE, EVAL_COLUMNS, keep_until_step=resume_step)
            if resume_step is not None:
                self.best, self.latest = _kept_so_far(self.run_dir / EVALUATIONS_FILE)
        self.board = _Board(self.run_dir, resume_step) if config.tensorboard else None

    def due(self, interval: int, iteration: int) -> bool:
        return bool(interval) and (iteration % interval == 0 or iteration == self.config.num_iterations)

    def after_iteration(self, run: Any, row: dict[str, Any], iteration: int, check_stop: Callable[[], None]) -> None:
        """Record what is due after ``iteration`` (``run``: the trainer's state, its policy just updated)."""
        if self.board is not None:
            self.board.scalars("progress", row, row["global_step"])
        if self.due(self.config.eval_interval, iteration):
            self.evaluate(run, check_stop)
        if self.config.video_interval and iteration % self.config.video_interval == 0:
            self.video(run, check_stop)

    def evaluate(self, run: Any, check_stop: Callable[[], None]) -> dict[str, Any]:
        from ppo_cli.envs import make_env
        from ppo_cli.evaluate import run_episodes

        if self.eval_env is None:
            self.eval_env = make_env(self.config.env_id, action_repeat=self.config.action_repeat)
        returns, _ = run_episodes(self.eval_env, run.policy, frozen_filter(run.obs_filter), self.config.eval_episodes,
                                  eval_seed(self.config.seed), True, None, check_stop)
        values = np.asarray(returns, dtype=float)
        row = {"global_step": run.global_step, "mean": float(values.mean()), "std": float(values.std()),
               "min": float(values.min()), "max": float(values.max()), "episodes": len(values),
               "time_s": round(run.elapsed(), 3)}
        self.log.write(row)
        self.latest = row["mean"]
        if row["mean"] > self.best:
            self.best = row["mean"]
            save_checkpoint(self.run_dir / BEST_FILE, run.snapshot())
        if self.board is not None:
            self.board.scalars("eval", row, run.global_step)
        return row

    def video(self, run: Any, check_stop: Callable[[], None]) -> None:
        from ppo_cli.envs import make_env
        from ppo_cli.evaluate import run_episodes
        from ppo_cli.render import VideoWriter, use_offscreen_backend

        if self.video_env is None:
            use_offscreen_backend()  # the probe of ppo eval --render (MUJOCO_GL chosen before the first context)
            self.video_env = make_env(self.config.env_id, render_mode="rgb_array",
                                      action_repeat=self.config.action_repeat)
            (self.run_dir / VIDEOS_DIR).mkdir(exist_ok=True)
        writer = VideoWriter(self.run_dir / VIDEOS_DIR / f"step_{run.global_step}.mp4",
                             float(self.video_env.metadata.get("render_fps") or 30), VIDEO_FRAMES)
        run_episodes(self.video_env, run.policy, frozen_filter(run.obs_filter), 1, eval_seed(self.config.seed), True,
                     writer, check_stop)
        writer.write()

    def close(self) -> None:
        for closing in (self.log, self.board, self.eval_env, self.video_env):
            if closing is not None:
                try:
                    closing.close()
                except Exception as exc:  # closing must not hide how the run ended
                    log.warning("while closing: %s: %s", type(exc).__name__, exc)


def _kept_so_far(path: Path) -> tuple[float, float | None]:
    """The best and the last mean of the rows kept in ``evaluations.csv`` (after a resume truncated it)."""
    import pandas as pd

    try:
        means = pd.read_csv(path)["mean"].dropna()
    except Exception:  # noqa: BLE001 - an empty or damaged file: no evaluation yet
        return -math.inf, None
    return (float(means.max()), float(means.iloc[-1])) if len(means) else (-math.inf, None)


def check_recorders(config: Config) -> None:
    """Refuse, before a run starts, recorders that cannot work here: TensorBoard without its package,
    videos without an off-screen renderer (choosing it now, for this process and its workers)."""
    from ppo_cli.errors import UserError

    if config.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard extra: pip install -c constraints.txt -e "
                            "'.[tensorboard]'", "--tensorboard") from None
    if config.video_interval:
        from ppo_cli.render import RenderError, use_offscreen_backend

        try:
            use_offscreen_backend()
        except RenderError as exc:
            raise UserError(str(exc), "--video-interval") from None


class _Board:
    """TensorBoard scalars in the seed folder; a failure is logged once and recording stops."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run's events after its checkpoint are dropped, as its CSV rows are
            self.writer = SummaryWriter(str(run_dir), purge_step=None if resume_step is None else resume_step + 1)
        except Exception as exc:  # noqa: BLE001 - no tensorboard package, or a folder it cannot write
            log.warning("TensorBoard is off: %s: %s", type(exc).__name__, exc)

    def scalars(self, group: str, row: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        try:
            for name, value in row.items():
                if name != "global_step" and isinstance(value, (int, float)) and value == value:
                    self.writer.add_scalar(f"{group}/{name}", float(value), int(step))
            self.writer.flush()
        except Exception as exc:  # noqa: BLE001 - a TensorBoard error never stops training
            log.warning("TensorBoard is off after an error: %s: %s", type(exc).__name__, exc)
            self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
