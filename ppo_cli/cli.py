"""The ``ppo`` command: parse and validate, build the config, call the library, print with rich.

No maths here. User mistakes become one ``click`` error line and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from click.core import ParameterSource
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ppo_cli._version import __version__
from ppo_cli.config import PRESETS, Config, ConfigError, config_fields, preset

DEFAULT_RUN_NAME = "default"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class HiddenSizes(click.ParamType):
    """``64,64`` or ``64x64`` -> ``(64, 64)``."""

    name = "SIZES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(part) for part in re.split(r"[,x ]+", str(value).strip()) if part)
        except ValueError:
            self.fail(f"{value!r} is not a list of layer widths like 64,64", param, ctx)


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN (which compares false with both bounds)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}", param, ctx)
        return number


def _describe_preset(name: str) -> str:
    """``"Walker2d --gae-lambda 0.9"``: the options preset ``name`` sets, per task family."""
    parts = []
    for family, values in PRESETS[name].items():
        flags = [(_flag(k) if v else "--no-" + _flag(k)[2:]) if isinstance(v, bool) else f"{_flag(k)} {v}"
                 for k, v in values.items()]
        parts.append(f"{'any task' if family == '*' else family} {' '.join(flags)}")
    return ", ".join(parts)


def config_options(func: Callable) -> Callable:
    """Add one ``--option`` per :class:`Config` field (except ``env_id``), with its default and help."""
    for f in reversed(config_fields()):
        if f.name == "env_id":
            continue
        flag, help_text = _flag(f.name), f.metadata["help"]
        kind = typing.get_type_hints(Config)[f.name]
        optional = isinstance(kind, types.UnionType) and type(None) in kind.__args__
        if kind is bool:
            decorator = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default, show_default=True,
                                     help=help_text)
        elif "choices" in f.metadata:
            decorator = click.option(flag, f.name, type=click.Choice(f.metadata["choices"]), default=f.default,
                                     show_default=True, help=help_text)
        elif f.name == "hidden_sizes":
            decorator = click.option(flag, f.name, type=HiddenSizes(), default=",".join(map(str, f.default)),
                                     show_default=True, help=help_text)
        else:
            base = float if optional or kind is float else int
            decorator = click.option(flag, f.name, type=base, default=f.default,
                                     show_default="off" if optional else True, help=help_text)
        func = decorator(func)
    return func


def build_config(values: dict[str, Any]) -> Config:
    """Construct a :class:`Config`, turning a validation error into a click error naming the flag(s)."""
    try:
        return Config(**values)
    except ConfigError as exc:
        message = str(exc)
        if len(exc.fields) == 1 and exc.fields[0] != "env_id":
            name = exc.fields[0]
            raise click.BadParameter(message.removeprefix(f"{name} "), param_hint=f"'{_flag(name)}'") from None
        for name in exc.fields:
            message = re.sub(rf"\b{name}\b", _flag(name), message)
        raise click.UsageError(message) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ppo")
def cli() -> None:
    """Train, evaluate and diagnose PPO agents on continuous-control tasks."""


@cli.command()
def envs() -> None:
    """List environment aliases and the Gymnasium ids they resolve to."""
    from ppo_cli.envs import alias_table

    table = Table(title="Environment aliases")
    table.add_column("alias")
    table.add_column("Gymnasium id (newest registered)")
    for alias, env_id in alias_table():
        table.add_row(alias, env_id if env_id != "-" else "[dim]not registered[/dim]")
    console = Console()
    console.print(table)
    console.print("Any registered Gymnasium id (e.g. Hopper-v4) or 'package.module:attr' naming an "
                  "environment class or factory works too.")


@cli.command()
@click.argument("env", required=False)
@config_options
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of seeds: --seed, --seed + 1, ...")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Seeds trained in parallel processes [default: min(seeds, CPU cores)].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results folder; runs go to OUT/<env id>/<run name>/seed_<k>/.")
@click.option("--run-name", default=None,
              help=f"Name of this run [default: '{DEFAULT_RUN_NAME}', or '{DEFAULT_RUN_NAME}-2', ... if taken].")
@click.option("--resume", "resume_from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue a seed folder, or every seed of a run folder, from its last checkpoint "
                   "(with its saved settings; --total-steps may extend it).")
@click.option("--trust-env", is_flag=True,
              help="With --resume: build a 'module:attr' environment named by the run's files (that runs its "
                   "code; without this flag such a run is refused).")
@click.option("--preset", "preset_name", type=click.Choice(sorted(PRESETS)), default=None,
              help="Start from a named set of settings instead of the defaults; options given beside it "
                   "still apply. tuned: the best measured config per MuJoCo task; classic: SB3's and "
                   "CleanRL's settings. They set: " + "; ".join(
                       f"{name}: {_describe_preset(name)}" for name in sorted(PRESETS)) + ".")
@click.option("--quiet", is_flag=True, help="Plain progress lines instead of the live display.")
@click.pass_context
def train(ctx: click.Context, env: str | None, num_seeds: int, jobs: int | None, out_dir: Path,
          run_name: str | None, resume_from: Path | None, trust_env: bool, preset_name: str | None, quiet: bool,
          **hyperparameters: Any) -> None:
    """Train PPO on ENV for one or more seeds.

    ENV is an alias (`ppo envs` lists them: hopper, halfcheetah, walker2d, ...), a registered
    Gymnasium id (Hopper-v4) or 'package.module:attr' naming your own environment class/factory.

    \b
    Example:
      ppo train hopper --seeds 3
      ppo train halfcheetah --total-steps 200000 --target-kl 0.02 --run-name kl0.02
      ppo train walker2d --preset tuned
      ppo train hopper --preset classic --num-envs 4
      ppo train --resume results/Hopper-v5/default --total-steps 2000000
    """
    from ppo_cli.launch import run_seeds
    from ppo_cli.signals import StopRequest

    with StopRequest() as stop:
        if resume_from is not None:
            plan = _resume_plan(ctx, resume_from, hyperparameters["total_steps"], trust_env)
        else:
            if env is None:
                raise click.UsageError("Missing argument 'ENV' (or continue a run with --resume FOLDER).")
            given = {k for k in hyperparameters if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
            plan = _new_run_plan(env, num_seeds, out_dir, run_name, hyperparameters, preset_name, given)
        if stop.requested:
            raise CommandError("stopped before training started; nothing was written", stop.exit_code)
        if not plan.jobs:
            return
        with plan.lock() as run_dir:
            configs = [job.config for job in plan.jobs]
            parallel = jobs or min(len(plan.jobs), os.cpu_count() or 1)
            console = Console()
            verb = "Resuming" if resume_from is not None else "Training"
            console.print(f"{verb} [bold]{configs[0].env_id}[/bold] for "
                          f"{configs[0].num_iterations * configs[0].batch_size:,} steps x {len(configs)} seed(s) "
                          f"({parallel} in parallel) -> {run_dir}", highlight=False, soft_wrap=True)
            display = _QuietDisplay(console) if quiet else _LiveDisplay(console, configs)
            with display:
                results = run_seeds(plan.jobs, parallel, display.on_event, stop)
            _print_summary(console, results)
    if any(r.status == "failed" for r in results):
        raise SystemExit(1)
    if stop.requested:
        raise SystemExit(stop.exit_code)
    interrupted = [r for r in results if r.status == "interrupted"]
    if interrupted:
        raise SystemExit(128 + (interrupted[0].signal or 2))


class CommandError(click.ClickException):
    """One ``Error:`` line (no usage text) for a failure that is not a mistake in the options; exit code 2
    unless another is given (``128 + signal`` for a stop before anything started)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class _Plan:
    """What ``ppo train`` will do: the seed jobs, and the run folder to create (new runs) and lock."""

    jobs: list[Any]
    run_dir: Path
    create: Callable[[], Path] | None = None  # a new run: makes the run folder and returns it
    record: Callable[[Path], object] | None = None  # a new run: writes its run.json, once it is locked
    lock_run: bool = True

    @contextlib.contextmanager
    def lock(self) -> Iterator[Path]:
        """Create the run folder, with the stop signals held back (a Ctrl-C cannot leave half a run),
        and hold its lock until the block ends."""
        from ppo_cli.files import FolderBusy, FolderLock
        from ppo_cli.signals import signals_deferred

        with contextlib.ExitStack() as held:
            with signals_deferred():
                if self.create is not None:
                    self.run_dir = self.create()
                    self.jobs = [dataclasses.replace(job, run_dir=self.run_dir / job.run_dir.name) for job in self.jobs]
                if self.lock_run:
                    try:
                        held.enter_context(FolderLock(self.run_dir))
                    except FolderBusy as exc:
                        raise CommandError(str(exc)) from None
                    except OSError as exc:
                        raise CommandError(f"cannot write to {self.run_dir}: {exc.strerror or exc}") from None
                try:
                    if self.record is not None:
                        self.record(self.run_dir)
                    for job in self.jobs:
                        job.run_dir.mkdir(exist_ok=True)  # new seeds, and seeds of a run.json that never started
                except OSError as exc:
                    raise CommandError(f"cannot write to {self.run_dir}: {exc.strerror or exc}") from None
            yield self.run_dir


def _new_run_plan(env: str, num_seeds: int, out_dir: Path, run_name: str | None, hyperparameters: dict[str, Any],
                  preset_name: str | None = None, given: set[str] = frozenset()) -> _Plan:
    """Validate everything and check the disk; the run folder is created when the plan is carried out.

    ``preset_name``'s values for the environment replace the defaults, except for the options in
    ``given`` (those typed on the command line).
    """
    from ppo_cli.checkpoint import required_bytes
    from ppo_cli.envs import EnvError, check_backend, check_spaces, make_env, resolve_env_id
    from ppo_cli.launch import SeedJob
    from ppo_cli.layout import env_folder, seed_folder, write_run

    try:
        env_id = resolve_env_id(env)
        probe = make_env(env_id)
        try:
            spaces = check_spaces(probe, env_id)
        finally:
            probe.close()
    except EnvError as exc:
        raise click.BadParameter(str(exc), param_hint="'ENV'") from None
    try:
        check_backend(env_id, hyperparameters["backend"])
    except EnvError as exc:
        raise click.BadParameter(str(exc), param_hint="'--backend'") from None
    if preset_name is not None:
        chosen = {k: v for k, v in preset(preset_name, env_id).items() if k not in given}
        hyperparameters = {**hyperparameters, **chosen}
    config = build_config({"env_id": env_id, **hyperparameters})
    env_dir = out_dir / env_folder(env_id)
    _check_run_name(env_dir, run_name)
    _check_free_space(out_dir, num_seeds * required_bytes(config, spaces.obs_dim, spaces.act_dim), num_seeds)
    configs = [config.replace(seed=config.seed + k) for k in range(num_seeds)]

    return _Plan([SeedJob(c, seed_folder(env_dir, c.seed)) for c in configs], env_dir,
                 create=lambda: _make_run_dir(out_dir, env_dir, run_name),
                 record=lambda run_dir: write_run(run_dir, config, [c.seed for c in configs]))


_RESUME_COMPANIONS = {"resume_from", "total_steps", "jobs", "quiet", "trust_env"}


def _resume_plan(ctx: click.Context, folder: Path, total_steps: int, trust_env: bool) -> _Plan:
    """One job per seed of the run (or the one seed folder) with steps left to train."""
    from ppo_cli.checkpoint import read_checkpoint, required_bytes
    from ppo_cli.envs import EnvError, check_spaces, make_env, require_trusted
    from ppo_cli.launch import SeedJob
    from ppo_cli.layout import LayoutError, is_seed_dir, plan_resume, run_folder_of

    given = [name for name in ctx.params
             if name not in _RESUME_COMPANIONS and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        flags = {"num_seeds": "seeds", "out_dir": "out", "preset_name": "preset"}
        names = ", ".join("ENV" if n == "env" else _flag(flags.get(n, n)) for n in given)
        raise click.UsageError(f"--resume continues a run with its saved settings; drop {names} "
                               f"(only --total-steps, --jobs, --quiet and --trust-env go with --resume)")
    extend = ctx.get_parameter_source("total_steps") == ParameterSource.COMMANDLINE
    _check_not_in_use(folder)
    try:
        seeds = plan_resume(folder, total_steps if extend else None, lambda p: read_checkpoint(p, resume=True))
    except LayoutError as exc:
        raise click.BadParameter(str(exc), param_hint="'--total-steps'" if str(exc).startswith("--total-steps")
                                 else "'--resume'") from None
    jobs, console, needed = [], Console(), 0
    for plan in seeds:
        if plan.action == "finished":
            console.print(f"{plan.seed_dir}: already finished at step {plan.steps_done:,}; nothing to do "
                          f"(a larger --total-steps extends it)", highlight=False, soft_wrap=True)
            continue
        try:
            require_trusted(plan.config.env_id, str(plan.seed_dir), trust_env)
            probe = make_env(plan.config.env_id)
            try:
                spaces = check_spaces(probe, plan.config.env_id)
            finally:
                probe.close()
        except EnvError as exc:
            raise click.BadParameter(f"cannot resume {plan.seed_dir}: {exc}", param_hint="'--resume'") from None
        saved = (plan.state or {}).get("spaces")
        if saved and (saved["obs_dim"], saved["act_dim"], saved["discrete"]) != (spaces.obs_dim, spaces.act_dim,
                                                                                   spaces.discrete):
            raise click.BadParameter(f"cannot resume {plan.seed_dir}: {plan.config.env_id} has {spaces.obs_dim} "
                                     f"observations and {spaces.act_dim} actions here, the checkpoint "
                                     f"{saved['obs_dim']} and {saved['act_dim']}", param_hint="'--resume'")
        needed += required_bytes(plan.config, spaces.obs_dim, spaces.act_dim)
        jobs.append(SeedJob(plan.config, plan.seed_dir, resume=plan.action == "resume"))
    _check_free_space(folder, needed, len(jobs))
    run_dir = folder if not is_seed_dir(folder) else run_folder_of(folder)
    return _Plan(jobs, run_dir or folder, lock_run=run_dir is not None)


def _check_not_in_use(folder: Path) -> None:
    """Refuse to resume a run (or seed) folder that another process is writing, or that cannot be
    written at all: one error before anything is read, planned or started."""
    from ppo_cli.files import FolderBusy, FolderLock
    from ppo_cli.layout import is_seed_dir, run_folder_of, seed_dirs

    run_dir = folder if not is_seed_dir(folder) else run_folder_of(folder)
    folders = ([run_dir] if run_dir is not None else []) + [d for d in seed_dirs(folder) if d.is_dir()]
    for path in folders:
        try:
            with FolderLock(path):
                pass
        except FolderBusy as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise click.BadParameter(f"cannot write to {path}: {exc.strerror or exc}", param_hint="'--resume'") from None


def _check_free_space(folder: Path, needed: int, seeds: int) -> None:
    existing = folder.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise click.UsageError(f"not enough free space in {existing} for {seeds} seed(s): need about "
                               f"{needed / 2**20:.1f} MiB for checkpoints and logs, {free / 2**20:.1f} MiB free")


@cli.command(name="eval")
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--episodes", type=click.IntRange(min=1), default=10, show_default=True, help="Episodes per checkpoint.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the first reset.")
@click.option("--deterministic/--stochastic", default=True, show_default=True,
              help="Mean (or most likely) action, or sample from the policy.")
@click.option("--env", "env_name", default=None,
              help="Evaluate on this environment instead of the checkpoint's (an alias, Gymnasium id or "
                   "'module:attr'; its observation and action sizes must be the policy's).")
@click.option("--trust-env", is_flag=True,
              help="Build a 'module:attr' environment named by the checkpoint (that runs its code; without "
                   "this flag, or --env, such a checkpoint is refused).")
@click.option("--render", is_flag=True,
              help="Show a live window; without a display, write a video next to the checkpoint.")
@click.option("--video", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a video of the evaluation to this .mp4 or .gif file.")
@click.option("--fps", type=FiniteFloatRange(min=0.1, max=1000), default=None,
              help="Video frame rate, 0.1-1000 [default: the environment's render_fps].")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Record at most this many frames [default: the whole first episode].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of tables.")
def eval_command(checkpoint: Path, episodes: int, seed: int, deterministic: bool, env_name: str | None,
                 trust_env: bool, render: bool, video: Path | None, fps: float | None, frames: int | None,
                 as_json: bool) -> None:
    """Evaluate CHECKPOINT with its own observation statistics and report raw returns.

    CHECKPOINT is a checkpoint.pt, a seed folder holding one, or a run folder (every seed_*/ in it).
    The result is also saved as eval.json next to each checkpoint.

    \b
    Example:
      ppo eval results/Hopper-v5/default/seed_0/checkpoint.pt --render
      ppo eval results/Hopper-v5/default --episodes 10 --json
    """
    import json

    from ppo_cli.render import RenderError, has_display, use_offscreen_backend

    paths, states, env_ids = _eval_inputs(checkpoint, env_name, trust_env)
    _check_eval_outputs(paths, video)
    render_mode = None
    if video is not None or render:
        live = render and video is None and has_display()
        if not live:
            try:
                use_offscreen_backend()  # before any environment is built
            except RenderError as exc:
                raise click.UsageError(str(exc)) from None
        render_mode = "human" if live else "rgb_array"
    from ppo_cli.evaluate import evaluate, load_agent, save_result
    from ppo_cli.render import VideoWriter

    loaded = [load_agent(p, state) for p, state in zip(paths, states)]
    _check_eval_envs(loaded, env_ids, render_mode)
    console = Console()
    results = []
    for path, agent, env_id in zip(paths, loaded, env_ids):
        writer = VideoWriter(video or path.parent / "eval.mp4", fps, frames) if render_mode == "rgb_array" else None
        try:
            result = evaluate(path, agent, episodes, seed, deterministic, render_mode, writer, env_id)
            save_result(result)
        except RenderError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"could not write the result next to {path}: {exc.strerror or exc}") from None
        results.append(result)
        if not as_json:
            _print_eval(console, result)
    if as_json:
        payload = [r.to_dict() for r in results]
        click.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))


def _eval_inputs(checkpoint: Path, env_name: str | None, trust_env: bool) -> tuple[list[Path], list[Any], list[str]]:
    """The checkpoints of CHECKPOINT, read and checked, and the environment to evaluate each on."""
    from ppo_cli.checkpoint import CheckpointError, read_checkpoint
    from ppo_cli.envs import EnvError, require_trusted, resolve_env_id
    from ppo_cli.layout import LayoutError, checkpoint_files

    try:
        paths = checkpoint_files(checkpoint)
        states = [read_checkpoint(p) for p in paths]
    except (CheckpointError, LayoutError) as exc:
        raise click.BadParameter(str(exc), param_hint="'CHECKPOINT'") from None
    if env_name is not None:
        try:
            return paths, states, [resolve_env_id(env_name)] * len(paths)  # typed by the user: theirs to run
        except EnvError as exc:
            raise click.BadParameter(str(exc), param_hint="'--env'") from None
    env_ids = [state["config"]["env_id"] for state in states]
    for path, env_id in zip(paths, env_ids):
        try:
            require_trusted(env_id, str(path), trust_env, env_option=True)
        except EnvError as exc:
            raise click.BadParameter(str(exc), param_hint="'CHECKPOINT'") from None
    return paths, states, env_ids


def _check_eval_outputs(paths: list[Path], video: Path | None) -> None:
    """Refuse, before evaluating, what could not be written: eval.json beside each checkpoint, the video."""
    from ppo_cli.files import check_writable
    from ppo_cli.render import RenderError, check_video_path

    if video is not None:
        if len(paths) > 1:
            raise click.UsageError(f"--video needs one checkpoint, the folder holds {len(paths)}; "
                                   f"pass a seed folder, or use --render to write one video per seed")
        try:
            check_video_path(video)
        except RenderError as exc:
            raise click.BadParameter(str(exc), param_hint="'--video'") from None
    for folder in dict.fromkeys([p.parent for p in paths] + ([video.parent] if video is not None else [])):
        try:
            check_writable(folder)
        except OSError as exc:
            raise click.BadParameter(f"cannot write the evaluation's files to {folder}: {exc.strerror or exc}",
                                     param_hint="'--video'" if video is not None and folder == video.parent
                                     else "'CHECKPOINT'") from None


def _check_eval_envs(loaded: list[Any], env_ids: list[str], render_mode: str | None) -> None:
    """Build each environment once: it must exist here and fit every policy evaluated on it."""
    from ppo_cli.envs import EnvError, make_env
    from ppo_cli.evaluate import check_env_fits

    for env_id in dict.fromkeys(env_ids):
        try:
            env = make_env(env_id, render_mode=render_mode)
        except EnvError as exc:
            raise click.BadParameter(f"the checkpoint's environment cannot be built here: {exc}",
                                     param_hint="'CHECKPOINT'") from None
        try:
            for agent in (a for a, e in zip(loaded, env_ids) if e == env_id):
                check_env_fits(agent, env, env_id)
        except EnvError as exc:
            raise click.BadParameter(str(exc), param_hint="'CHECKPOINT'") from None
        finally:
            env.close()


def _print_eval(console: Console, result: Any) -> None:
    mode = "deterministic" if result.deterministic else "stochastic"
    console.print(f"{result.checkpoint}", highlight=False, soft_wrap=True)
    table = Table(title=f"{result.env_id} at step {result.global_step:,} ({mode})")
    table.add_column("episode", justify="right")
    table.add_column("return", justify="right")
    table.add_column("length", justify="right")
    for k, (ret, length) in enumerate(zip(result.returns, result.lengths)):
        table.add_row(str(k), f"{ret:.1f}", str(length))
    table.add_section()
    table.add_row("mean +- std", f"{result.mean:.1f} +- {result.std:.1f}",
                  f"{sum(result.lengths) / len(result.lengths):.0f}")
    console.print(table)
    if result.video:
        console.print(f"video: {result.video}", highlight=False, soft_wrap=True)


@cli.command()
@click.argument("folders", nargs=-1, required=True, metavar="FOLDER...",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--metrics", default=None, metavar="NAME,...",
              help="Figure rows: progress.csv columns, comma-separated [default: episodic_return,value_loss,"
                   "entropy,action_std,approx_kl,clipfrac,explained_variance].")
@click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True, metavar="W",
              help="Trailing rolling mean over W grid points of each seed, before averaging seeds (1: none).")
@click.option("--x", "x_axis", type=click.Choice(["steps", "time"]), default="steps", show_default=True,
              help="x axis: environment steps (global_step) or wall-clock time (time_s).")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default=None,
              help="Figure format [default: the suffix of --out, else png].")
@click.option("--out", type=str, default=None,
              help="Figure file (.png, .pdf, .svg), or a folder for it (an existing folder, a name ending in "
                   "'/' or without a suffix) [default: FOLDER/plots/learning_curves.FORMAT]; summary.csv is "
                   "written beside it.")
@click.option("--eval", "with_eval", is_flag=True,
              help="Add the results of `ppo eval` (eval.json next to each final checkpoint) to the summary.")
def plot(folders: tuple[Path, ...], metrics: str | None, smooth: int, x_axis: str, fmt: str | None,
         out: str | None, with_eval: bool) -> None:
    """Plot learning curves and diagnostics across seeds; summarise final returns.

    Reads every progress.csv (and episodes.csv) below the folders. The figure has one row per
    metric, one column per environment and one colour per run: the mean across seeds with a 95%
    bootstrap band. The summary (final return, IQM with a 95% stratified-bootstrap interval) is
    printed and written as summary.csv next to the figure.

    \b
    Example:
      ppo plot results/
      ppo plot results/ --metrics episodic_return,approx_kl --smooth 5 --format pdf
    """
    from ppo_cli.plots.data import PlotError
    from ppo_cli.plots.report import plot_runs

    names = None
    if metrics is not None:
        names = [m for m in re.split(r"[,\s]+", metrics) if m]
        if not names:
            raise click.BadParameter("give at least one metric name, e.g. episodic_return,value_loss",
                                     param_hint="'--metrics'")
    figure_path = _plot_path(folders[0], out, fmt)
    try:
        result = plot_runs(list(folders), figure_path, names, x=x_axis, smooth=smooth, with_eval=with_eval)
    except PlotError as exc:
        for warning in exc.warnings:
            click.echo(f"Warning: {warning}", err=True)
        raise click.BadParameter(str(exc), param_hint=f"'{exc.param or 'FOLDER...'}'") from None
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    console = Console()
    console.print(f"figure: {result.figure_path}", highlight=False, soft_wrap=True)
    _print_plot_summary(console, result.summary)
    console.print(f"summary: {result.summary_path}", highlight=False, soft_wrap=True)


def _plot_path(folder: Path, out: str | None, fmt: str | None) -> Path:
    """The figure file from ``--out`` and ``--format`` (default ``FOLDER/plots/learning_curves.png``).

    ``--out`` names a folder (created if needed) when it is one, ends in ``/`` or has no suffix;
    otherwise a figure file, whose suffix must be a figure format. Something that exists and is
    neither a folder nor a regular file (``/dev/full``) is refused.
    """
    from ppo_cli.plots import DEFAULT_FIGURE, FORMATS

    if out is None:
        return folder / "plots" / f"{DEFAULT_FIGURE}.{fmt or 'png'}"
    path = Path(out)
    if not out.strip():
        raise click.BadParameter("give a figure file or a folder", param_hint="'--out'")
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise click.BadParameter(f"{out} is neither a folder nor a regular file", param_hint="'--out'")
    suffix = path.suffix.lower().removeprefix(".")
    if path.is_dir() or out.endswith(("/", os.sep)) or not suffix:
        if path.is_file():
            raise click.BadParameter(f"{out} is a file without a figure suffix; give a folder or a .png, .pdf "
                                     f"or .svg file", param_hint="'--out'")
        return path / f"{DEFAULT_FIGURE}.{fmt or 'png'}"
    if suffix not in FORMATS:
        raise click.BadParameter(f"{out}: the figure file must end in {', '.join('.' + f for f in FORMATS)}",
                                 param_hint="'--out'")
    if fmt is not None and fmt != suffix:
        raise click.UsageError(f"--format {fmt} and --out {out} disagree; drop --format or use "
                               f"--out {path.with_suffix('.' + fmt)}")
    return path


def _print_plot_summary(console: Console, summary: Any) -> None:
    """The final-return table, and with ``--eval`` a second one for the ``eval.json`` returns."""
    from rich import box
    from rich.markup import escape

    def num(value: float) -> str:  # about 4 significant digits; NaN: no value
        return "-" if value != value else f"{value:.0f}" if abs(value) >= 100 else f"{value:#.3g}"

    def steps(low: int, high: int) -> str:
        short = [f"{v / 1e6:.4g}M" if v >= 1e6 else f"{v / 1e3:.4g}k" if v >= 1e3 else str(v) for v in (low, high)]
        return short[1] if low == high else "-".join(short)

    tables = [("Final return: mean of the last 10% of steps per seed", "final",
               lambda row: [str(row.seeds), steps(row.steps_min, row.steps_max)], ["seeds", "steps"])]
    if "eval_seeds" in summary.columns:
        tables.append(("Evaluation: mean return of each seed's eval.json", "eval",
                       lambda row: [str(row.eval_seeds)], ["seeds"]))
    for title, prefix, first_cells, first_columns in tables:
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ["env", "run", *first_columns, "mean +- std", "IQM [95% CI]"]:
            text = column in {"env", "run"}
            width = max([len(column)] + [len(v) for v in summary[column]]) if text else None
            table.add_column(column, justify="left" if text else "right", overflow="fold",
                             min_width=min(width, 24) if text else None)
        for row in summary.itertuples(index=False):
            value = {k: getattr(row, f"{prefix}_{k}") for k in ("mean", "std", "iqm", "iqm_ci_low", "iqm_ci_high")}
            table.add_row(escape(row.env), escape(row.run), *first_cells(row),
                          f"{num(value['mean'])} +- {num(value['std'])}",
                          f"{num(value['iqm'])} [{num(value['iqm_ci_low'])}, {num(value['iqm_ci_high'])}]")
        console.print(table)


def _check_run_name(env_dir: Path, run_name: str | None) -> None:
    """Refuse a ``--run-name`` that cannot be a new folder under ``env_dir``, before anything is created."""
    if run_name is None:
        return
    if not run_name or "/" in run_name or "\0" in run_name or run_name in {".", ".."}:
        raise click.BadParameter(f"{run_name!r} is not a folder name", param_hint="'--run-name'")
    existing = env_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(run_name)) > limit:
        raise click.BadParameter(f"{run_name[:40]}... is {len(os.fsencode(run_name))} bytes long; folder names "
                                 f"here can have at most {limit}", param_hint="'--run-name'")
    if (env_dir / run_name).exists():
        raise click.UsageError(f"--run-name {run_name}: {env_dir / run_name} already exists; choose another name "
                               f"or remove it")


def _make_run_dir(out_dir: Path, env_dir: Path, run_name: str | None) -> Path:
    """Create ``OUT/<env folder>/<run name>`` without ever reusing an existing folder (``mkdir`` either
    creates it or fails, so two processes can never get the same one); on failure, remove the
    folders this call created."""
    from ppo_cli.files import check_writable

    created = [p for p in (env_dir, *env_dir.parents) if not p.exists()]
    try:
        try:
            env_dir.mkdir(parents=True, exist_ok=True)
            check_writable(env_dir)
        except OSError as exc:
            raise click.BadParameter(f"cannot write to {out_dir}: {exc.strerror or exc}", param_hint="'--out'") from None
        if run_name is not None:
            try:
                (env_dir / run_name).mkdir()
            except FileExistsError:
                raise click.UsageError(f"--run-name {run_name}: {env_dir / run_name} already exists; choose another "
                                       f"name or remove it") from None
            except OSError as exc:
                raise click.BadParameter(f"cannot create {env_dir / run_name}: {exc.strerror or exc}",
                                         param_hint="'--run-name'") from None
            return env_dir / run_name
        for k in range(1, 10_000):
            run_dir = env_dir / (DEFAULT_RUN_NAME if k == 1 else f"{DEFAULT_RUN_NAME}-{k}")
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
        raise click.UsageError(f"no free run name under {env_dir}; pass --run-name")
    except click.ClickException:
        for folder in created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


class _LiveDisplay:
    """A rich progress bar per seed: steps, SPS, latest return, ETA."""

    def __init__(self, console: Console, configs: list[Config]) -> None:
        self.progress = Progress(
            TextColumn("[bold]seed {task.fields[seed]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[sps]:>6} sps"), TextColumn("return {task.fields[ret]:>8}"),
            TimeRemainingColumn(), console=console)
        self.tasks = {cfg.seed: self.progress.add_task("train", total=cfg.num_iterations * cfg.batch_size,
                                                       seed=cfg.seed, sps="-", ret="-", start=False)
                      for cfg in configs}

    def __enter__(self) -> _LiveDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_event(self, event: tuple[str, int, Any]) -> None:
        kind, seed, payload = event
        task = self.tasks[seed]
        if kind == "start":
            self.progress.start_task(task)
        elif kind == "iteration":
            ret = payload["final_return"]
            self.progress.update(task, completed=payload["global_step"], sps=str(payload["sps"]), ret=_fmt(ret))


class _QuietDisplay:
    """One plain line per iteration and seed."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> _QuietDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def on_event(self, event: tuple[str, int, Any]) -> None:
        kind, seed, payload = event
        if kind == "iteration":
            self.console.print(f"seed {seed} step {payload['global_step']}/{payload['total_steps']} "
                               f"sps {payload['sps']} return {_fmt(payload['final_return'])}",
                               highlight=False, soft_wrap=True)


def _print_summary(console: Console, results: list[Any]) -> None:
    table = Table(title="Runs")
    for column in ("seed", "status", "final return", "steps", "wall time", "files"):
        table.add_column(column, justify="right" if column in {"final return", "steps", "wall time"} else "left",
                         overflow="fold")
    for r in results:
        style = {"finished": "green", "interrupted": "yellow", "failed": "red"}[r.status]
        table.add_row(str(r.seed), f"[{style}]{r.status}[/{style}]", _fmt(r.final_return), f"{r.global_step:,}",
                      f"{r.wall_time_s:.1f} s", r.run_dir)
    console.print(table)
    for r in results:
        if r.message:
            console.print(f"seed {r.seed}: {r.message}", highlight=False, soft_wrap=True)
        if r.status == "interrupted" and r.checkpoint and r.global_step:
            console.print(f"seed {r.seed}: checkpoint of step {r.global_step:,} in {r.checkpoint}",
                          highlight=False, soft_wrap=True)


def main() -> None:
    """The console script. Unlike click's default, a Ctrl-C that reaches the top (a second one while
    a command checks its input) exits with 130, as a shell expects."""
    try:
        code = cli.main(prog_name="ppo", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        raise SystemExit(130) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
