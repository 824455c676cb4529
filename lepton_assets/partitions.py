"""Partitioning of the data half of the graph: one partition per landing day.

The first day comes from ``LEPTON_FIRST_DAY`` (YYYY-MM-DD), read when the code location
loads: Dagster fixes a partitions definition when it loads the definitions, so this one
setting cannot wait for a run like the others. Unset: 2024-01-01.
"""

import os
import re
from datetime import date

import dagster as dg

FIRST_DAY_VARIABLE = "LEPTON_FIRST_DAY"
DEFAULT_FIRST_DAY = "2024-01-01"


def first_day(value: str | None) -> str:
    """The first partition's date, checked; raises naming the variable when it is not a date."""
    text = value or DEFAULT_FIRST_DAY
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise ValueError(f"{FIRST_DAY_VARIABLE}={text!r} is not a date (YYYY-MM-DD)") from exc


# The last partition is yesterday (end_offset=0): a day is ingested once it is complete.
daily_partitions_def = dg.DailyPartitionsDefinition(
    start_date=first_day(os.environ.get(FIRST_DAY_VARIABLE))
)

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def landed_days(folders: list[str]) -> tuple[list[str], list[str]]:
    """Of the landing zone's folder names, in their order: the days that are partitions, and
    the day-named ones that are not (yet), such as today or a date before the first day."""
    named = [f for f in folders if DAY.match(f)]
    days = [d for d in named if daily_partitions_def.has_partition_key(d)]
    return days, [d for d in named if d not in days]
