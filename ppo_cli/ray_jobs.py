"""Seed jobs as Ray tasks on an existing cluster (``ppo sweep --ray``); ``ray`` is an optional extra.

Ray's workers need not share a file system with the driver, so a job travels as data: each task
trains one *segment* of a job (about a tenth of its iterations) in a temporary folder of its own,
starting from the files the driver sends (none, or what a resume reads: the seed folder's
checkpoint, CSVs and best checkpoint), and returns every file the seed folder holds as bytes
(with ``--eval-interval``, ``--tensorboard`` and ``--video-interval`` also ``evaluations.csv``,
``best.pt``, the event files and ``videos/``); the driver writes them into the sweep folder
(atomically) and sends the next segment. A segment ends like a Ctrl-C at the end of an iteration,
so the checkpoint it returns resumes exactly (an interrupted and resumed run equals an
uninterrupted one: tested), and a job trained in segments on Ray writes the same rows as one
trained locally. Ray retries a task whose worker was lost (``max_retries``) from the same input:
the job's last returned checkpoint, or the start.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ppo_cli.errors import UserError
from ppo_cli.files import atomic_write
from ppo_cli.launch import SeedJob
from ppo_cli.layout import BEST_FILE, CHECKPOINT_FILE, CONFIG_FILE, EPISODES_FILE, EVALUATIONS_FILE, PROGRESS_FILE

RESUME_FILES = (CONFIG_FILE, PROGRESS_FILE, EPISODES_FILE, CHECKPOINT_FILE, EVALUATIONS_FILE, BEST_FILE)  # sent
SEGMENTS = 10  # segments per job: how much a lost worker can cost
SEGMENT_END = 0  # the "signal" of a segment that ended as planned
RETRIES = 3


def connect(address: str) -> tuple[Any, bool]:
    """``ray.init`` on the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://...``, or ``local``: a
    new one in this process, one CPU per core); returns ``ray`` and whether this call connected.
    One clear error without the extra or without a cluster there."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs the ray extra: pip install -c constraints.txt -e '.[ray]'", "--ray") from None
    if ray.is_initialized():
        return ray, False
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if os.environ.get("PYTHONPATH"):  # where the user's environment modules are (the same machine's workers)
        options["runtime_env"] = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
    _probe(address)
    try:
        if address == "local":
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ""
        if not os.environ.get("RAY_AUTH_MODE") and Path("~/.ray/auth_token").expanduser().is_file():
            hint = " (if the cluster uses token authentication, set RAY_AUTH_MODE=token)"
        raise UserError(f"no Ray cluster could be reached at {address!r}: {exc}{hint}", "--ray", usage=False) from None
    return ray, True


def _probe(address: str) -> None:
    """A ``HOST:PORT`` must accept a connection: ``ray.init`` waits minutes for one that never does."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "//" in address:
        return  # auto, local, ray://...: Ray's own lookup
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster could be reached at {address!r}: {exc.strerror or exc}", "--ray",
                        usage=False) from None


def train_segment(config: dict[str, Any], files: dict[str, bytes], until_iteration: int, resume: bool) -> dict[str, Any]:
    """One segment of a job, in a temporary folder: train from ``files`` up to ``until_iteration``; return
    the seed folder's files, the rows written and the result. Runs on a Ray worker (or anywhere)."""
    from ppo_cli.config import Config
    from ppo_cli.signals import StopRequest
    from ppo_cli.trainer import train

    rows: list[dict[str, Any]] = []
    stop = StopRequest()  # requested at the end of the segment's last iteration, with no signal: SEGMENT_END

    def on_iteration(row: dict[str, Any]) -> None:
        rows.append(row)
        if row["iteration"] >= until_iteration:
            stop.request(SEGMENT_END)

    with tempfile.TemporaryDirectory(prefix="ppo-ray-") as folder:
        for name, data in files.items():
            Path(folder, name).write_bytes(data)
        result = train(Config.from_dict(config), Path(folder), on_iteration, resume=resume, stop=stop)
        out = {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(Path(folder).rglob("*"))
               if path.is_file() and not path.name.startswith(".")}  # not the .lock, nor a temporary
    return {"files": out, "rows": rows, "result": asdict(result)}


def _send(job: SeedJob) -> dict[str, bytes]:
    """What a job's next segment starts from: the seed folder's files that a resume reads (none for a
    fresh start)."""
    if not job.resume:
        return {}
    return {name: (job.run_dir / name).read_bytes() for name in RESUME_FILES if (job.run_dir / name).is_file()}


def _destination(run_dir: Path, name: object) -> Path:
    """Where a returned file goes: below the seed folder, never elsewhere (the name comes from a worker)."""
    parts = Path(name).parts if isinstance(name, str) else ()
    if not parts or Path(name).is_absolute() or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"a Ray worker returned the file name {name!r}, which is not inside a seed folder")
    return run_dir.joinpath(*parts)


def run_on_ray(jobs: list[SeedJob], address: str, on_event: Callable[[Any], None], stop: Any) -> list[Any]:
    """Run ``jobs`` as Ray tasks (one CPU each) on the cluster at ``address``, a segment at a time; returns
    one ``TrainResult`` per job, in order. A stop request lets running segments finish and sends no more."""
    from ppo_cli.trainer import TrainResult

    ray, connected = connect(address)
    task = ray.remote(num_cpus=1, max_retries=RETRIES)(train_segment)
    results: dict[Any, Any] = {}
    pending: dict[Any, tuple[SeedJob, int]] = {}

    def submit(job: SeedJob, done_iterations: int) -> None:
        step = max(1, -(-job.config.num_iterations // SEGMENTS))
        until = min(job.config.num_iterations, done_iterations + step)
        ref = task.remote(job.config.to_dict(), _send(job), until, job.resume)
        pending[ref] = (job, until)

    for job in jobs:
        on_event(("start", job.ident, None))
        submit(job, _iterations_done(job))
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                job, until = pending.pop(ref)
                result = _receive(ray, ref, job, on_event)
                segment_ended = result.status == "interrupted" and result.signal == SEGMENT_END
                if segment_ended and not stop.requested:
                    submit(SeedJob(job.config, job.run_dir, True, job.key), result.iterations)  # the next segment
                    continue
                if segment_ended:
                    result.message = f"stopped after the segment ending at iteration {result.iterations}"
                    result.signal = stop.signum
                results[job.ident] = result
                on_event(("done", job.ident, result))
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if connected:
            ray.shutdown()
    return [results.get(job.ident) or TrainResult(job.config.seed, str(job.run_dir), "interrupted",
                                                  message="not finished", signal=stop.signum) for job in jobs]


def _iterations_done(job: SeedJob) -> int:
    if not job.resume:
        return 0
    from ppo_cli.checkpoint import load_checkpoint

    return int(load_checkpoint(job.run_dir / CHECKPOINT_FILE)["iteration"])


def _receive(ray: Any, ref: Any, job: SeedJob, on_event: Callable[[Any], None]) -> Any:
    """Write a finished segment's files into the job's seed folder and pass its rows on as events."""
    from ppo_cli.trainer import TrainResult

    try:
        out = ray.get(ref)
    except Exception as exc:  # the task failed after its retries: Ray reports it in many ways
        return TrainResult(job.config.seed, str(job.run_dir), "failed", message=f"Ray task failed: "
                                                                              f"{type(exc).__name__}: {exc}")
    try:
        destinations = {_destination(job.run_dir, name): data for name, data in out["files"].items()}
    except ValueError as exc:
        return TrainResult(job.config.seed, str(job.run_dir), "failed", message=str(exc))
    for path, data in destinations.items():
        path.parent.mkdir(parents=True, exist_ok=True)  # videos/
        atomic_write(path, lambda f, data=data: f.write(data))
    for row in out["rows"]:
        on_event(("iteration", job.ident, row))
    result = TrainResult(**out["result"])
    result.run_dir = str(job.run_dir)
    result.checkpoint = str(job.run_dir / CHECKPOINT_FILE)
    return result
