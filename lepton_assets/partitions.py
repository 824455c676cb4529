"""Partitioning of the data half of the graph: one partition per landing day."""

import dagster as dg

# The last partition is yesterday (end_offset=0): a day is ingested once it is complete.
daily_partitions_def = dg.DailyPartitionsDefinition(start_date="2024-01-01")
