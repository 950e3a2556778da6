"""``ppo plot``: learning curves and diagnostics across seeds, and a summary with honest statistics.

* ``data``: find the CSVs below some folders, read them into one long table (env, run, seed, step,
  time_s, metric, value), put every seed of a run on a common grid;
* ``stats``: mean across seeds with a bootstrap band, final return per seed, IQM with a
  stratified-bootstrap interval;
* ``figure``: the seaborn/matplotlib figure (Agg canvas, no display);
* ``report``: :func:`ppo_cli.plots.report.plot_runs`, all of the above as one call.

Reads CSV and JSON only: never imports the trainer or torch. This module holds only constants, so
that the CLI can name the choices without importing pandas and matplotlib.
"""

DEFAULT_METRICS = ("episodic_return", "value_loss", "entropy", "action_std", "approx_kl", "clipfrac",
                   "explained_variance")
"""Rows of the figure when ``--metrics`` is not given."""

X_AXES = ("steps", "time")
"""``--x``: environment steps (``global_step``) or wall-clock seconds (``time_s``)."""

FORMATS = ("png", "pdf", "svg")
"""Figure file formats."""

DEFAULT_FIGURE = "learning_curves"  # <first folder>/plots/learning_curves.<format>
SUMMARY_FILE = "summary.csv"  # written next to the figure
