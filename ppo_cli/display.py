"""What ``ppo`` prints with rich: the live training display, and the tables of each command.

The CLI decides what to show; these render it. Nothing here computes a result.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ppo_cli.config import Config


def print_eval(console: Console, result: Any) -> None:
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



def print_plot_summary(console: Console, summary: Any) -> None:
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
    if "evaluations_seeds" in summary.columns and (summary["evaluations_seeds"] > 0).any():
        for which, what in (("last", "each seed's last evaluation during training"),
                            ("best", "each seed's best evaluation during training (optimistic: a maximum)")):
            tables.append((f"Evaluation: {what}", f"evaluation_{which}",
                           lambda row: [str(row.evaluations_seeds)], ["seeds"]))
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


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


class _Diagnosing:
    """The live diagnosis of each seed (:class:`~ppo_cli.diagnose.LiveDiagnosis`), fed the iteration events."""

    def __init__(self, configs: list[Config]) -> None:
        from ppo_cli.diagnose import LiveDiagnosis

        self.live = {cfg.seed: LiveDiagnosis(cfg.to_dict()) for cfg in configs}

    def findings(self, seed: int, row: dict[str, Any]) -> list[Any]:
        """The findings new at this row, most severe first."""
        live = self.live.get(seed)
        return live.add(row) if live is not None else []


class LiveDisplay(_Diagnosing):
    """A rich progress bar per seed: steps, SPS, latest return, ETA, and the newest finding of the
    live diagnosis."""

    def __init__(self, console: Console, configs: list[Config]) -> None:
        super().__init__(configs)
        self.progress = Progress(
            TextColumn("[bold]seed {task.fields[seed]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[sps]:>6} sps"), TextColumn("return {task.fields[ret]:>8}"),
            TimeRemainingColumn(), TextColumn("{task.fields[finding]}"), console=console)
        self.tasks = {cfg.seed: self.progress.add_task("train", total=cfg.num_iterations * cfg.batch_size,
                                                       seed=cfg.seed, sps="-", ret="-", finding="", start=False)
                      for cfg in configs}

    def __enter__(self) -> LiveDisplay:
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
            found = self.findings(seed, payload)
            changes = {"finding": _finding_text(found[0])} if found else {}
            self.progress.update(task, completed=payload["global_step"], sps=str(payload["sps"]),
                                 ret=_fmt(payload["final_return"]), **changes)


class QuietDisplay(_Diagnosing):
    """One plain line per iteration and seed, and one per new finding of the live diagnosis."""

    def __init__(self, console: Console, configs: list[Config] = ()) -> None:
        super().__init__(list(configs))
        self.console = console

    def __enter__(self) -> QuietDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def on_event(self, event: tuple[str, int, Any]) -> None:
        kind, seed, payload = event
        if kind == "iteration":
            self.console.print(f"seed {seed} step {payload['global_step']}/{payload['total_steps']} "
                               f"sps {payload['sps']} return {_fmt(payload['final_return'])}",
                               highlight=False, soft_wrap=True)
            for found in self.findings(seed, payload):
                self.console.print(f"seed {seed} finding: {found.severity}: {found.what} ({found.evidence}); try "
                                   f"{', '.join(found.try_options)}", highlight=False, soft_wrap=True)


def _finding_text(finding: Any) -> str:
    style = {"problem": "red", "warning": "yellow", "note": "dim"}[finding.severity]
    return f"[{style}]{finding.what}[/{style}]"


def print_diagnosis(console: Console, report: Any) -> None:
    """One table per run, most severe first; a healthy run in one line."""
    from rich.markup import escape

    title = f"{report.env} / {report.run} ({len(report.seeds)} seed{'s' if len(report.seeds) != 1 else ''})"
    if not report.findings:
        console.print(f"{escape(title)}: [green]healthy[/green], no finding", highlight=False, soft_wrap=True)
        return
    verdict = "[green]healthy[/green], notes only" if report.healthy else \
        f"{sum(f.severity == 'problem' for f in report.findings)} problem(s), " \
        f"{sum(f.severity == 'warning' for f in report.findings)} warning(s)"
    table = Table(title=f"{escape(title)}: {verdict}", show_lines=True, title_justify="left")
    for column, ratio in (("severity", 1), ("what", 3), ("evidence", 5), ("what it usually means", 5),
                          ("try", 3)):
        table.add_column(column, ratio=ratio, overflow="fold")
    for f in report.findings:
        style = {"problem": "red", "warning": "yellow", "note": "dim"}[f.severity]
        seeds = ", ".join(f.seeds)
        evidence = f"{f.metric}, seed{'s' if len(f.seeds) > 1 else ''} {seeds}, steps {f.steps[0]:,}-{f.steps[1]:,}: " \
                   f"{f.evidence}" + "".join(f"\ncoincides with {c}" for c in f.coincides)
        table.add_row(f"[{style}]{f.severity}[/{style}]", escape(f.what), escape(evidence), escape(f.meaning),
                      escape("\n".join(f.try_options)))
    console.print(table)


def print_run_summary(console: Console, results: list[Any]) -> None:
    evaluated = any(getattr(r, "best_eval", None) is not None for r in results)
    repeated = any(r.action_repeat > 1 for r in results)
    table = Table(title="Runs")
    columns = ["seed", "status", "final return", *(["best eval", "last eval"] if evaluated else []), "steps",
               *(["frames"] if repeated else []), "wall time", "files"]
    for column in columns:
        table.add_column(column, justify="left" if column in {"seed", "status", "files"} else "right", overflow="fold")
    for r in results:
        style = {"finished": "green", "interrupted": "yellow", "failed": "red"}[r.status]
        evals = [_fmt(r.best_eval), _fmt(r.last_eval)] if evaluated else []
        frames = [f"{r.global_step * r.action_repeat:,}"] if repeated else []
        table.add_row(str(r.seed), f"[{style}]{r.status}[/{style}]", _fmt(r.final_return), *evals,
                      f"{r.global_step:,}", *frames, f"{r.wall_time_s:.1f} s", r.run_dir)
    console.print(table)
    for r in results:
        if r.message:
            console.print(f"seed {r.seed}: {r.message}", highlight=False, soft_wrap=True)
        if r.status == "interrupted" and r.checkpoint and r.global_step:
            console.print(f"seed {r.seed}: checkpoint of step {r.global_step:,} in {r.checkpoint}",
                          highlight=False, soft_wrap=True)


class SweepDisplay:
    """A sweep's progress: jobs done, running and failed, the steps of all jobs together with their
    total rate, and the ETA (one plain line per finished job with ``quiet``)."""

    def __init__(self, console: Console, jobs: list[Any], quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.totals = {job.ident: job.config.num_iterations * job.config.batch_size for job in jobs}
        self.steps = {job.ident: 0 for job in jobs}
        self.sps: dict[Any, int] = {}
        self.counts = {"done": 0, "running": 0, "failed": 0}
        self.progress = Progress(
            TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(), console=console, disable=quiet)
        self.task = self.progress.add_task("sweep", total=sum(self.totals.values()), status="")

    def __enter__(self) -> SweepDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_event(self, event: tuple[str, Any, Any]) -> None:
        kind, key, payload = event
        if kind == "start":
            self.counts["running"] += 1
        elif kind == "iteration":
            self.steps[key], self.sps[key] = payload["global_step"], payload["sps"]
        elif kind == "done":
            self.counts["running"] -= 1
            self.counts["failed" if payload.status == "failed" else "done"] += payload.status != "interrupted"
            self.sps.pop(key, None)
            if payload.status == "finished":
                self.steps[key] = self.totals.get(key, self.steps.get(key, 0))
            if self.quiet:
                ret = payload.final_return
                self.console.print(f"{key}: {payload.status} at step {payload.global_step:,}, return {_fmt(ret)}"
                                   + (f" ({payload.message})" if payload.message else ""),
                                   highlight=False, soft_wrap=True)
        c = self.counts
        status = f"{c['done']} done, {c['running']} running, {c['failed']} failed, {sum(self.sps.values()):,} steps/s"
        self.progress.update(self.task, completed=sum(self.steps.values()), status=status)


def print_ranking(console: Console, ranking: Any) -> None:
    """Per environment, the points by IQM, best first; where a point's interval overlaps the best's, the
    ranking between them is not significant, and the table says so."""
    from rich.markup import escape

    def num(value: float) -> str:
        return "-" if value != value else f"{value:.0f}" if abs(value) >= 100 else f"{value:#.3g}"

    for env, group in ranking.groupby("env", sort=True):
        by = "evaluation" if group["by"].iloc[0] == "eval" else "final training"
        table = Table(title=f"{escape(env)}: points by {by} return IQM", title_justify="left")
        for column in ("rank", "point", "seeds", "IQM [95% CI]", "mean +- std", "note"):
            table.add_column(column, justify="right" if column in ("rank", "seeds") else "left", overflow="fold")
        for row in group.itertuples(index=False):
            note = "best" if row.rank == 1 else ("interval overlaps the best's: not significantly different"
                                                 if row.overlaps_best else "below the best")
            table.add_row(str(row.rank), escape(row.point), str(row.seeds),
                          f"{num(row.iqm)} [{num(row.iqm_ci_low)}, {num(row.iqm_ci_high)}]",
                          f"{num(row.mean)} +- {num(row.std)}", note)
        console.print(table)
