"""Validation, the one part of the core that runs Great Expectations (GX 1.x, called
directly): ``suite.build_suite`` (a spec's expectations), ``suite.run_suite`` (GX's results,
at Polars speed where ``polars_engine`` covers an expectation), ``suite.row_failures`` and
``suite.table_failures`` (what a result rejects), ``suite.data_docs_html`` (GX's page, escaped),
and ``batch_checks`` (ids seen in other days, the drift reference). Nothing a training rank,
``lepton predict`` or a server imports comes from here, so they never load GX.
"""

from typing import Literal

# Which engine runs a suite (``suite.run_suite``); here, so that naming it loads no GX.
Engine = Literal["polars", "pandas"]
