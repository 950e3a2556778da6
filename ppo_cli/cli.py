"""The ``ppo`` command: parse and validate, build the config, call the library, print with rich.

No maths here. User mistakes become one ``click`` error line and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from ppo_cli._version import __version__
from ppo_cli.config import PRESETS, Config, ConfigError, config_fields

DEFAULT_RUN_NAME = "default"  # ppo_cli.runs.DEFAULT_RUN_NAME (not imported: --help stays fast)


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
    """``"Walker2d --gae-lambda 0.9"``: the options preset ``name`` sets, per task family; families
    given the same options share one entry (``"dm_control/cheetah-run, dm_control/walker-run ..."``)."""
    def option(key: str, value: Any) -> str:
        if isinstance(value, bool):
            return _flag(key) if value else "--no-" + _flag(key)[2:]
        return f"{_flag(key)} {','.join(map(str, value)) if isinstance(value, tuple) else value}"

    families: dict[str, list[str]] = {}
    for family, values in PRESETS[name].items():
        flags = " ".join(option(k, v) for k, v in values.items())
        families.setdefault(flags, []).append("any task" if family == "*" else family)
    return "; ".join(f"{', '.join(names)} {flags}" for flags, names in families.items())


def field_type(name: str) -> tuple[click.ParamType, bool]:
    """The click type that reads :class:`Config` field ``name`` on the command line, and whether the
    field is optional (None: off). ``ppo train``'s options and ``ppo sweep --grid`` use the same."""
    f = next(f for f in config_fields() if f.name == name)
    kind = typing.get_type_hints(Config)[name]
    optional = isinstance(kind, types.UnionType) and type(None) in kind.__args__
    if kind is bool:
        return click.BOOL, False
    if "choices" in f.metadata:
        return click.Choice(f.metadata["choices"]), False
    if name == "hidden_sizes":
        return HiddenSizes(), False
    return (click.FLOAT if optional or kind is float else click.INT), optional


def config_options(func: Callable) -> Callable:
    """Add one ``--option`` per :class:`Config` field (except ``env_id``), with its default and help."""
    for f in reversed(config_fields()):
        if f.name == "env_id":
            continue
        flag, help_text = _flag(f.name), f.metadata["help"]
        kind, optional = field_type(f.name)
        if kind is click.BOOL:
            decorator = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default, show_default=True,
                                     help=help_text)
        elif f.name == "hidden_sizes":
            decorator = click.option(flag, f.name, type=kind, default=",".join(map(str, f.default)),
                                     show_default=True, help=help_text)
        else:
            decorator = click.option(flag, f.name, type=kind, default=f.default,
                                     show_default="off" if optional else True, help=help_text)
        func = decorator(func)
    return func


def checked_config(values: dict[str, Any]) -> Config:
    """Construct a :class:`Config`; a validation error becomes a ``UserError`` naming the flag(s)."""
    from ppo_cli.errors import UserError

    try:
        return Config(**values)
    except ConfigError as exc:
        message = str(exc)
        if len(exc.fields) == 1 and exc.fields[0] != "env_id":
            name = exc.fields[0]
            raise UserError(message.removeprefix(f"{name} "), _flag(name)) from None
        for name in exc.fields:
            message = re.sub(rf"\b{name}\b", _flag(name), message)
        raise UserError(message) from None


def build_config(values: dict[str, Any]) -> Config:
    """:func:`checked_config`, its error as click's (exit code 2, the flag named)."""
    with _user_errors():
        return checked_config(values)


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
    _print_dmc_tasks(console)


def _print_dmc_tasks(console: Console) -> None:
    from ppo_cli import dmc

    missing = dmc.describe_missing()
    if missing is not None:
        console.print(f"DeepMind Control Suite: {missing}", highlight=False, soft_wrap=True, markup=False)
        return
    table = Table(title="DeepMind Control Suite (the dmc extra)")
    table.add_column("name")
    table.add_column("Gymnasium id (Shimmy)")
    for name, env_id in dmc.task_table():
        table.add_row(name, env_id)
    console.print(table)


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
                   "still apply. tuned: the best measured config per MuJoCo and DMC task; classic: SB3's "
                   "and CleanRL's settings. They set: " + " ".join(
                       f"{name}: {_describe_preset(name)}." for name in sorted(PRESETS)))
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
    from ppo_cli.display import LiveDisplay, QuietDisplay, print_run_summary
    from ppo_cli.launch import run_seeds
    from ppo_cli.signals import StopRequest

    with StopRequest() as stop:
        plan = _plan(ctx, env, num_seeds, out_dir, run_name, resume_from, trust_env, preset_name, hyperparameters)
        console = Console()
        for seed_dir, steps in plan.finished:
            console.print(f"{seed_dir}: already finished at step {steps:,}; nothing to do (a larger --total-steps "
                          f"extends it)", highlight=False, soft_wrap=True)
        if stop.requested:
            raise CommandError("stopped before training started; nothing was written", stop.exit_code)
        results = []
        if plan.jobs:
            with _user_errors(), plan.open() as run_dir:
                configs = [job.config for job in plan.jobs]
                parallel = jobs or min(len(plan.jobs), os.cpu_count() or 1)
                verb = "Resuming" if resume_from is not None else "Training"
                console.print(f"{verb} [bold]{configs[0].env_id}[/bold] for "
                              f"{configs[0].num_iterations * configs[0].batch_size:,} steps x {len(configs)} "
                              f"seed(s) ({parallel} in parallel) -> {run_dir}", highlight=False, soft_wrap=True)
                display = QuietDisplay(console, configs) if quiet else LiveDisplay(console, configs)
                with display:
                    results = run_seeds(plan.jobs, parallel, display.on_event, stop)
                print_run_summary(console, results)
    raise SystemExit(_exit_code(results, stop))


def _plan(ctx: click.Context, env: str | None, num_seeds: int, out_dir: Path, run_name: str | None,
          resume_from: Path | None, trust_env: bool, preset_name: str | None, values: dict[str, Any]) -> Any:
    """The :class:`~ppo_cli.runs.RunPlan` of a ``ppo train`` call: a resume, or a new run."""
    from ppo_cli.runs import plan_new_run, plan_resume_run

    with _user_errors():
        if resume_from is not None:
            _check_resume_options(ctx)
            extend = ctx.get_parameter_source("total_steps") == ParameterSource.COMMANDLINE
            return plan_resume_run(resume_from, values["total_steps"] if extend else None, trust_env)
        if env is None:
            raise click.UsageError("Missing argument 'ENV' (or continue a run with --resume FOLDER).")
        given = {k for k in values if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        return plan_new_run(env, num_seeds, out_dir, run_name, values, preset_name, given, build_config)


def _exit_code(results: list[Any], stop: Any) -> int:
    """1 if a seed failed; else ``128 + signal`` if training was stopped (by the signal the launcher or a
    seed got); else 0."""
    if any(r.status == "failed" for r in results):
        return 1
    if stop.requested:
        return stop.exit_code
    interrupted = [r for r in results if r.status == "interrupted"]
    return 128 + (interrupted[0].signal or 2) if interrupted else 0


class CommandError(click.ClickException):
    """One ``Error:`` line (no usage text) for a failure that is not a mistake in the options; exit code 2
    unless another is given (``128 + signal`` for a stop before anything started)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a library's :class:`~ppo_cli.errors.UserError` into click's error for it, once."""
    from ppo_cli.errors import UserError

    try:
        yield
    except UserError as exc:
        if not exc.usage:
            raise CommandError(str(exc)) from None
        if exc.param:
            raise click.BadParameter(str(exc), param_hint=f"'{exc.param}'") from None
        raise click.UsageError(str(exc)) from None


_RESUME_COMPANIONS = {"resume_from", "total_steps", "jobs", "quiet", "trust_env"}


def _check_resume_options(ctx: click.Context) -> None:
    """--resume takes the run's saved settings: refuse every option that would change them."""
    given = [name for name in ctx.params
             if name not in _RESUME_COMPANIONS and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        flags = {"num_seeds": "seeds", "out_dir": "out", "preset_name": "preset"}
        names = ", ".join("ENV" if n == "env" else _flag(flags.get(n, n)) for n in given)
        raise click.UsageError(f"--resume continues a run with its saved settings; drop {names} "
                               f"(only --total-steps, --jobs, --quiet and --trust-env go with --resume)")


@cli.command(name="eval")
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="Episodes per checkpoint [default: 10; 50 on DMC tasks, whose episodes are bimodal].")
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
@click.option("--best", is_flag=True,
              help="Evaluate each seed's best.pt (the best evaluation during training) instead of checkpoint.pt; "
                   "its result goes to best_eval.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of tables.")
def eval_command(checkpoint: Path, episodes: int | None, seed: int, deterministic: bool, env_name: str | None,
                 trust_env: bool, render: bool, video: Path | None, fps: float | None, frames: int | None,
                 best: bool, as_json: bool) -> None:
    """Evaluate CHECKPOINT with its own observation statistics and report raw returns.

    CHECKPOINT is a checkpoint.pt, a seed folder holding one, or a run folder (every seed_*/ in it).
    The result is also saved next to each checkpoint: eval.json, or best_eval.json with --best (the
    final checkpoint's eval.json is kept). --render writes eval.mp4 (best_eval.mp4).

    \b
    Example:
      ppo eval results/Hopper-v5/default/seed_0/checkpoint.pt --render
      ppo eval results/Hopper-v5/default --episodes 10 --json
      ppo eval results/Hopper-v5/default --best
    """
    import json

    from ppo_cli.display import print_eval
    from ppo_cli.evaluate import check_envs, evaluate, load_agent, plan_eval, save_result
    from ppo_cli.layout import evaluation_outputs
    from ppo_cli.render import RenderError, VideoWriter, has_display, use_offscreen_backend

    with _user_errors():
        planned = plan_eval(checkpoint, env_name, trust_env, video, best)
        render_mode = None
        if video is not None or render:
            live = render and video is None and has_display()
            if not live:
                try:
                    use_offscreen_backend()  # before any environment is built
                except RenderError as exc:
                    raise click.UsageError(str(exc)) from None
            render_mode = "human" if live else "rgb_array"
        loaded = [load_agent(job.checkpoint, job.state) for job in planned]
        check_envs(planned, loaded, render_mode)
    console = Console()
    results = []
    for job, agent in zip(planned, loaded):
        writer = None
        if render_mode == "rgb_array":
            writer = VideoWriter(video or evaluation_outputs(job.checkpoint)[1], fps, frames)
        try:
            result = evaluate(job.checkpoint, agent, episodes, seed, deterministic, render_mode, writer, job.env_id)
            save_result(result)
        except RenderError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"could not write the result next to {job.checkpoint}: {exc.strerror or exc}") from None
        results.append(result)
        if not as_json:
            print_eval(console, result)
    if as_json:
        payload = [r.to_dict() for r in results]
        click.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))


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
    from ppo_cli.display import print_plot_summary
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
    print_plot_summary(console, result.summary)
    console.print(f"summary: {result.summary_path}", highlight=False, soft_wrap=True)


@cli.command(name="diagnose")
@click.argument("folders", nargs=-1, required=True, metavar="FOLDER...",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON on stdout instead of tables.")
@click.option("--plot", "with_plot", is_flag=True,
              help="Also draw the `ppo plot` figure with each finding's steps shaded and numbered.")
@click.option("--out", type=str, default=None,
              help="With --plot: the figure file, or a folder for it [default: FOLDER/plots/diagnosis.png].")
def diagnose_command(folders: tuple[Path, ...], as_json: bool, with_plot: bool, out: str | None) -> None:
    """Read each run's diagnostics across seeds and say what went wrong and what to try.

    FOLDER is a run folder (all its seeds), a seed folder, or a results tree (every run below it).
    Each finding gives its evidence (metric, seeds, steps, value against its threshold), what it
    usually means and what to try as `ppo train` options. Exit code 0 whatever it finds.

    \b
    Example:
      ppo diagnose results/Hopper-v5/default
      ppo diagnose results/ --json
      ppo diagnose results/Hopper-v5/default --plot
    """
    import json

    from ppo_cli.diagnose import diagnose, highlights
    from ppo_cli.display import print_diagnosis
    from ppo_cli.plots.data import PlotError

    try:
        reports, warnings = diagnose(list(folders))
        figure = None
        if with_plot:
            from ppo_cli.plots.report import plot_runs

            marks, metrics = highlights(reports)
            figure = plot_runs(list(folders), _plot_path(folders[0], out, None, "diagnosis"), metrics,
                               highlights=marks).figure_path
    except PlotError as exc:
        for warning in exc.warnings:
            click.echo(f"Warning: {warning}", err=True)
        raise click.BadParameter(str(exc), param_hint=f"'{exc.param or 'FOLDER...'}'") from None
    for warning in warnings:
        click.echo(f"Warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps({"runs": [r.to_dict() for r in reports], "figure": str(figure) if figure else None},
                              indent=2))
        return
    console = Console()
    for report in reports:
        print_diagnosis(console, report)
    if figure is not None:
        console.print(f"figure: {figure}", highlight=False, soft_wrap=True)


_SWEEP_RESUME_COMPANIONS = {"resume_from", "jobs", "quiet", "trust_env", "ray_address", "with_eval", "episodes"}


@cli.command(name="sweep")
@click.argument("envs", required=False, metavar="ENVS")
@config_options
@click.option("--grid", "grids", multiple=True, metavar="NAME=V1,V2,...",
              help="A grid axis: a `ppo train` option (as NAME or --name) and its values, comma-separated "
                   "(hidden sizes as 64x64; off for an optional one). Repeat for more axes: the sweep is "
                   "their cross product x ENVS x seeds.")
@click.option("--spec", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A TOML file with envs = [...], seeds = N, preset = NAME, a [grid] table (NAME = [values]) "
                   "and an [options] table of fixed `ppo train` options; the command line wins.")
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per point: --seed, --seed + 1, ... [default: 3].")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Jobs trained at once on this machine [default: the number of CPU cores].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results folder; the sweep goes to OUT/sweeps/<name>/.")
@click.option("--name", "sweep_name", default=None, help="Name of the sweep [default: 'sweep', 'sweep-2', ...].")
@click.option("--preset", "preset_name", type=click.Choice(sorted(PRESETS)), default=None,
              help="Start every point from a preset (as `ppo train --preset`); grid and given options win.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run the jobs as Ray tasks on an existing cluster: auto (or RAY_ADDRESS), HOST:PORT, "
                   "ray://HOST:PORT; local starts one in this process. Needs the ray extra.")
@click.option("--resume", "resume_from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue a sweep folder: finished jobs are skipped, started ones continue.")
@click.option("--trust-env", is_flag=True, help="With --resume: build 'module:attr' environments the sweep names.")
@click.option("--eval", "with_eval", is_flag=True,
              help="Evaluate every final checkpoint (as `ppo eval`; again where its eval.json is older, not its own or "
                   "of another --episodes) and rank by the evaluation IQM.")
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="With --eval: episodes per checkpoint [default: 10; 50 on DMC tasks].")
@click.option("--quiet", is_flag=True, help="Plain lines instead of the live display.")
@click.pass_context
def sweep_command(ctx: click.Context, envs: str | None, grids: tuple[str, ...], spec: Path | None,
                  num_seeds: int | None, jobs: int | None, out_dir: Path, sweep_name: str | None,
                  preset_name: str | None, ray_address: str | None, resume_from: Path | None, trust_env: bool,
                  with_eval: bool, episodes: int | None, quiet: bool, **values: Any) -> None:
    """Train a grid of `ppo train` options x ENVS x seeds, here or on a Ray cluster, and rank the points.

    ENVS: one environment or several, comma-separated (aliases, Gymnasium ids, 'module:attr').
    Every point's seeds are an ordinary run folder under OUT/sweeps/<name>/<env id>/<point>/.

    \b
    Example:
      ppo sweep halfcheetah,hopper,walker2d --grid target_kl=0.01,0.03,0.07 --seeds 3
      ppo sweep hopper --grid lr=1e-4,3e-4 --grid gae_lambda=0.9,0.95 --seeds 5 --total-steps 500000
      ppo sweep hopper --grid lr=1e-4,3e-4 --ray auto
      ppo sweep --resume results/sweeps/sweep
    """
    from ppo_cli.checkpoint import read_checkpoint
    from ppo_cli.display import SweepDisplay, print_ranking, print_run_summary
    from ppo_cli.runs import locked
    from ppo_cli.signals import StopRequest, signals_deferred
    from ppo_cli.sweep import plan_resume_sweep, run_jobs

    with StopRequest() as stop:
        with _user_errors():
            if resume_from is not None:
                given = [n for n in ctx.params if n not in _SWEEP_RESUME_COMPANIONS
                         and ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
                if given:
                    raise click.UsageError(f"--resume continues a sweep with its saved grid and options; drop "
                                           f"{', '.join(_flag(n) for n in given)}")
                plan = plan_resume_sweep(resume_from, lambda p: read_checkpoint(p, resume=True), trust_env)
            else:
                plan = _sweep_plan(ctx, envs, grids, spec, num_seeds, out_dir, sweep_name, preset_name, values)
        if stop.requested:
            raise CommandError("stopped before the sweep started; nothing was written", stop.exit_code)
        console = Console()
        with contextlib.ExitStack() as held:
            with signals_deferred(), _user_errors():
                if plan.new:
                    _make_sweep_dir(plan.sweep_dir)
                held.enter_context(locked(plan.sweep_dir))
                if plan.new:
                    plan.create()
            parallel = jobs or os.cpu_count() or 1
            where = f"on Ray ({ray_address})" if ray_address else f"{min(parallel, len(plan.jobs))} at a time"
            console.print(f"Sweep {plan.sweep_dir}: {len(plan.jobs)} job(s) to train, {where}; "
                          f"{len(plan.finished)} finished", highlight=False, soft_wrap=True)
            results = []
            if plan.jobs:
                display = SweepDisplay(console, plan.jobs, quiet)
                with display, _user_errors():
                    results = run_jobs(plan.jobs, parallel, display.on_event, stop, ray_address)
                failed = [r for r in results if r.status != "finished"]
                if failed:
                    print_run_summary(console, failed)
            _finish_sweep(console, plan.sweep_dir, with_eval, episodes, stop, print_ranking)
    raise SystemExit(_exit_code(results, stop))


def _make_sweep_dir(folder: Path) -> None:
    """Create the new sweep's folder: ``mkdir`` creates it or fails, so two sweeps never share one."""
    from ppo_cli.errors import UserError

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
    except FileExistsError:
        raise UserError(f"{folder} was created by another process meanwhile; choose another --name") from None
    except OSError as exc:
        raise UserError(f"cannot write to {folder.parent}: {exc.strerror or exc}", "--out") from None


def _finish_sweep(console: Console, sweep_dir: Path, with_eval: bool, episodes: int | None, stop: Any,
                  print_ranking: Callable[..., None]) -> None:
    """Evaluate (with --eval) and rank what the sweep holds; print the ranking."""
    from ppo_cli.plots.data import PlotError
    from ppo_cli.sweep import evaluate_checkpoints, summarise

    if with_eval and not stop.requested:
        with _user_errors():
            evaluated = evaluate_checkpoints(sweep_dir, episodes)
        each = episodes or "10 (50 on DMC)"
        console.print(f"evaluated {evaluated} checkpoint(s), {each} episodes each", highlight=False)
    try:
        ranking, figure, warnings = summarise(sweep_dir, with_eval)
    except PlotError as exc:
        console.print(f"no ranking yet: {exc}", highlight=False, soft_wrap=True)
        return
    for warning in warnings:
        click.echo(f"Warning: {warning}", err=True)
    print_ranking(console, ranking)
    console.print(f"ranking: {sweep_dir / 'sweep.csv'}\nfigure: {figure}", highlight=False, soft_wrap=True)


def _sweep_plan(ctx: click.Context, envs: str | None, grids: tuple[str, ...], spec: Path | None,
                num_seeds: int | None, out_dir: Path, sweep_name: str | None, preset_name: str | None,
                values: dict[str, Any]) -> Any:
    """A new sweep's plan: the TOML spec (if any) under the command line, every value parsed and every
    config validated as `ppo train` would, the disk checked, before anything is written."""
    from ppo_cli.checkpoint import required_bytes
    from ppo_cli.runs import check_free_space, check_run_name
    from ppo_cli.sweep import SWEEPS, plan_sweep

    toml = _read_spec(spec) if spec is not None else {}
    given = {k for k in values if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    for name, raw in toml.get("options", {}).items():
        field = _field_name(name, "--spec [options]")
        if field not in given:
            values[field] = _parse_value(field, raw, f"--spec [options] {name}")
            given.add(field)
    env_list = envs.split(",") if envs else [str(e) for e in toml.get("envs", [])]
    env_list = [e.strip() for e in env_list if e.strip()]
    if not env_list:
        raise click.UsageError("Missing argument 'ENVS' (or continue a sweep with --resume FOLDER).")
    axes = _parse_grid(list(grids), toml.get("grid", {}), given)
    seeds = num_seeds or toml.get("seeds", 3)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise click.BadParameter(f"seeds = {seeds!r}: a positive integer", param_hint="'--spec'")
    sweeps = out_dir / SWEEPS
    name = sweep_name or toml.get("name") or _free_name(sweeps, "sweep")
    check_run_name(sweeps, str(name))
    plan = plan_sweep(env_list, axes, [values["seed"] + k for k in range(seeds)], sweeps / str(name), values,
                      preset_name or toml.get("preset"), given, checked_config)
    needed = sum(required_bytes(job.config, *plan.sizes[job.config.env_id]) for job in plan.jobs)
    check_free_space(out_dir, needed, len(plan.jobs))
    return plan


def _free_name(folder: Path, default: str) -> str:
    """``default``, else ``default-2``, ... : the first name not taken in ``folder`` (taken for good by mkdir)."""
    for k in range(1, 10_000):
        name = default if k == 1 else f"{default}-{k}"
        if not (folder / name).exists():
            return name
    raise click.UsageError(f"no free sweep name under {folder}; pass --name")


def _read_spec(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{path} is not a readable TOML file ({exc})", param_hint="'--spec'") from None
    unknown = sorted(set(data) - {"envs", "seeds", "preset", "name", "grid", "options"})
    if unknown or not isinstance(data.get("grid", {}), dict) or not isinstance(data.get("options", {}), dict):
        raise click.BadParameter(f"{path}: expected envs, seeds, preset, name, a [grid] and an [options] table"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else ""), param_hint="'--spec'")
    return data


def _field_name(name: str, where: str) -> str:
    """``--target-kl``, ``target-kl`` or ``target_kl`` -> ``target_kl``, if it is a settable config field."""
    import difflib

    field = name.strip().removeprefix("--").replace("-", "_")
    names = [f.name for f in config_fields() if f.name not in ("env_id", "seed")]
    if field not in names:
        close = difflib.get_close_matches(field, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; one of {', '.join(names)}"
        raise click.BadParameter(f"{name!r} is not a `ppo train` option{hint}", param_hint=f"'{where}'")
    return field


def _parse_value(field: str, raw: Any, where: str) -> Any:
    kind, optional = field_type(field)
    if optional and str(raw).strip().lower() in ("off", "none"):
        return None
    try:
        return kind.convert(raw if not isinstance(raw, list) else tuple(raw), None, None)
    except click.BadParameter as exc:
        raise click.BadParameter(f"{raw!r} for {_flag(field)}: {exc.message}", param_hint=f"'{where}'") from None


def _parse_grid(grids: list[str], toml_grid: dict[str, Any], given: set[str]) -> list[Any]:
    """``NAME=V1,V2,...`` (and the spec's [grid]) -> axes, every value read by `ppo train`'s own option types."""
    from ppo_cli.sweep import Axis

    raw: dict[str, tuple[str, list[Any]]] = {}
    for name, listed in toml_grid.items():
        raw[_field_name(name, "--spec [grid]")] = ("--spec [grid]", listed if isinstance(listed, list) else [listed])
    for text in grids:
        name, sep, values = text.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{text!r} is not NAME=V1,V2,... (e.g. target_kl=0.01,0.03)", param_hint="'--grid'")
        raw[_field_name(name, "--grid")] = ("--grid", [v.strip() for v in values.split(",") if v.strip()])
    axes = []
    for field, (where, listed) in raw.items():
        if not listed:
            raise click.BadParameter(f"{_flag(field)} has no values; give them as {field}=V1,V2,...",
                                     param_hint=f"'{where}'")
        if field in given:
            raise click.UsageError(f"{_flag(field)} is both a fixed option and a grid axis; drop one")
        parsed = [_parse_value(field, v, where) for v in listed]
        if len(set(map(repr, parsed))) != len(parsed):
            raise click.BadParameter(f"{_flag(field)} lists a value twice: {', '.join(map(str, listed))}",
                                     param_hint=f"'{where}'")
        axes.append(Axis(field, tuple(parsed), tuple(str(v) for v in listed)))
    return axes


def _plot_path(folder: Path, out: str | None, fmt: str | None, name: str | None = None) -> Path:
    """The figure file from ``--out`` and ``--format`` (default ``FOLDER/plots/learning_curves.png``).

    ``--out`` names a folder (created if needed) when it is one, ends in ``/`` or has no suffix;
    otherwise a figure file, whose suffix must be a figure format. Something that exists and is
    neither a folder nor a regular file (``/dev/full``) is refused.
    """
    from ppo_cli.plots import DEFAULT_FIGURE, FORMATS

    name = name or DEFAULT_FIGURE
    if out is None:
        return folder / "plots" / f"{name}.{fmt or 'png'}"
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
        return path / f"{name}.{fmt or 'png'}"
    if suffix not in FORMATS:
        raise click.BadParameter(f"{out}: the figure file must end in {', '.join('.' + f for f in FORMATS)}",
                                 param_hint="'--out'")
    if fmt is not None and fmt != suffix:
        raise click.UsageError(f"--format {fmt} and --out {out} disagree; drop --format or use "
                               f"--out {path.with_suffix('.' + fmt)}")
    return path



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
