"""Run records, the leaderboard CSVs and tables, seed grouping and published numbers.

* :mod:`~benchmark.results.records` -- the typed result schema (pydantic), reading and writing run files.
* :mod:`~benchmark.results.groups` -- runs grouped over seeds, variant labels against the tier's defaults,
  off-protocol flags, ranks.
* :mod:`~benchmark.results.leaderboard` -- the two CSVs rebuilt from every run file.
* :mod:`~benchmark.results.tables` -- the tables printed by the CLI and shown in the report (from memory).
* :mod:`~benchmark.results.reported` -- published numbers, never ranked with the reproduced ones.
* :mod:`~benchmark.results.metadata` -- registry and protocol facts the tables use.
"""

from benchmark.io import new_run_id, utc_now
from benchmark.results.groups import (
    GROUP_IGNORED,
    OFF_PROTOCOL,
    TIER_ORDER,
    SeedGroup,
    Stats,
    group_runs,
    metric_columns,
    metric_order,
    rank_groups,
    run_changes,
    variant_of,
)
from benchmark.results.leaderboard import (
    BASE_COLUMNS,
    LEADERBOARD,
    LEADERBOARD_MEAN_STD,
    TAIL_COLUMNS,
    Leaderboard,
    build_leaderboard,
    latest_leaderboard,
    mean_std_csv,
    rebuild_leaderboard,
    scan_runs,
)
from benchmark.results.metadata import (
    config_changes,
    flatten_config,
    primary_metrics,
    producer,
    tier_defaults,
)
from benchmark.results.records import (
    LAYOUTS,
    MAX_HISTORY,
    RUN_FLAGS,
    SCHEMA_VERSION,
    TIMINGS,
    MetricValue,
    RunResult,
    SchemaError,
    SplitEvaluation,
    Weight,
    downsample_history,
    load_result,
    weights_summary,
    write_result,
)
from benchmark.results.reported import (
    REPORTED,
    REPORTED_COLUMNS,
    format_reported,
    load_reported,
    reported_path,
)
from benchmark.results.tables import TableView, align, fmt_mean_std, format_tables, views

__all__ = [
    "BASE_COLUMNS", "config_changes", "GROUP_IGNORED", "LAYOUTS", "LEADERBOARD", "LEADERBOARD_MEAN_STD", "MAX_HISTORY", "OFF_PROTOCOL",
    "REPORTED", "REPORTED_COLUMNS", "RUN_FLAGS", "SCHEMA_VERSION", "TAIL_COLUMNS", "TIER_ORDER", "TIMINGS",
    "Leaderboard", "MetricValue", "RunResult", "SchemaError", "SeedGroup", "SplitEvaluation", "Stats", "TableView",
    "Weight", "align", "build_leaderboard", "downsample_history", "flatten_config", "fmt_mean_std", "format_reported",
    "format_tables", "group_runs", "latest_leaderboard", "load_reported", "load_result", "mean_std_csv",
    "metric_columns", "metric_order", "new_run_id", "primary_metrics", "producer", "rank_groups", "rebuild_leaderboard",
    "reported_path", "run_changes", "scan_runs", "tier_defaults", "utc_now", "variant_of", "views", "weights_summary", "write_result",
]  # fmt: skip
