"""``ugpu stats``: the performance log per component and GPU, and its rows as CSV."""

from __future__ import annotations

import csv
from typing import TextIO

from ultrasinger_gpu_cli.components import spec
from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.store.stats import ComponentStats
from ultrasinger_gpu_cli.store.db import Store


def _check(component: str | None, since: str | None = None) -> None:
    if component is not None:
        spec(component)  # refuses an unknown component, listing the valid ones
    if since is not None:
        import datetime as dt

        try:
            dt.datetime.fromisoformat(since.strip())
        except ValueError:
            raise InvalidSettingError(f"invalid --since {since!r}; write a date and time like 2026-11-01 or "
                                      "'2026-11-01 18:30'") from None  # fmt: skip


def component_stats(store: Store, *, component: str | None = None, since: str | None = None,
                    gpu: int | None = None) -> list[ComponentStats]:  # fmt: skip
    _check(component, since)
    return store.component_stats(component=component, since=since, gpu=gpu)


def write_csv(store: Store, out: TextIO, *, component: str | None = None, since: str | None = None,
              gpu: int | None = None) -> int:  # fmt: skip
    """The log's rows, every column, as CSV on ``out``; returns how many rows."""
    _check(component, since)
    rows = store.performance_rows(component, since, gpu)
    columns = [d[1] for d in store.query("PRAGMA table_info(performance_log)")]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([safe_cell(row[c]) for c in columns])
    return len(rows)


def safe_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a leading
    quote, as OWASP's guidance on CSV injection says; numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
