"""The analysis behind `compare`: statistics, the paper-style table, aggregate scores and figures, on plain records.

Nothing here reads the tracking store: the caller turns finished runs into `RunResult`s and passes them in.
"""

from slate_rl.reporting.aggregate import AggregateScore, aggregate_scores, normalised_scores
from slate_rl.reporting.contrasts import Contrast, build_contrasts, contrasts_to_csv, contrasts_to_markdown
from slate_rl.reporting.figures import (
    TradeoffPoint,
    plot_learning_curves,
    plot_offline_curves,
    plot_tradeoff,
    tradeoff_points,
    write_figures,
)
from slate_rl.reporting.names import ENV_NAMES, env_name, is_privileged, method_name, row_order
from slate_rl.reporting.records import RunResult
from slate_rl.reporting.render import (
    aggregates_to_markdown,
    to_csv,
    to_latex,
    to_markdown,
    to_per_seed_csv,
    to_runs_csv,
)
from slate_rl.reporting.stats import (
    CurveBand,
    Difference,
    Summary,
    WelchTest,
    curve_band,
    difference_test,
    iqm,
    summarise,
    welch_test,
)
from slate_rl.reporting.table import ResultsTable, TableCell, build_table

__all__ = [
    "ENV_NAMES",
    "AggregateScore",
    "Contrast",
    "CurveBand",
    "Difference",
    "ResultsTable",
    "RunResult",
    "Summary",
    "TableCell",
    "TradeoffPoint",
    "WelchTest",
    "aggregate_scores",
    "aggregates_to_markdown",
    "build_contrasts",
    "build_table",
    "contrasts_to_csv",
    "contrasts_to_markdown",
    "curve_band",
    "difference_test",
    "env_name",
    "iqm",
    "is_privileged",
    "method_name",
    "normalised_scores",
    "plot_learning_curves",
    "plot_offline_curves",
    "plot_tradeoff",
    "row_order",
    "summarise",
    "to_csv",
    "to_latex",
    "to_markdown",
    "to_per_seed_csv",
    "to_runs_csv",
    "tradeoff_points",
    "welch_test",
    "write_figures",
]
