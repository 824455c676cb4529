"""Statistics of one number column read part by part (a file at a time), in bounded memory.

Count, mean and standard deviation are exact: each part's moments are merged with Chan et
al.'s pairwise formula. The median and the deciles are exact too (Polars' median, NumPy's
interpolated quantiles) while the column has at most ``EXACT_LIMIT`` values, which are kept
for them; past that the kept values are dropped and both come from a t-digest (fastdigest,
at most ``CENTROIDS`` centroids), so memory stays the same however many rows the split has.
A t-digest is deterministic (the same parts in the same order give the same digest), so a
dataset built twice from the same days gets the same preprocessing and drift reference, which
a randomized sketch (KLL, REQ) would not give.
"""

from typing import Any, cast

import numpy as np
import polars as pl
from fastdigest import TDigest

from lepton_core.drift import DECILES, binned_summary, numeric_summary

EXACT_LIMIT = 1_000_000  # values kept for exact quantiles: 8 MB of float64
CENTROIDS = 1000


def numeric_statistics(values: pl.Series, impute: str) -> tuple[float, float, float]:
    """(fill, mean, std) of one numeric feature's non-null train values. An all-null feature
    fills 0 with mean 0 and std 1; a constant one gets std 1."""
    if len(values) == 0:
        return 0.0, 0.0, 1.0
    mean = float(cast(float, values.mean()))
    fill = float(cast(float, values.median())) if impute == "median" else mean
    std = cast(float | None, values.std())
    return fill, mean, float(std) if std and std > 1e-8 else 1.0


class NumberSketch:
    """Fed each part's values with ``add``; then ``statistics`` and ``summary``."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.kept: list[pl.Series] | None = []  # None once past EXACT_LIMIT
        self.digest: TDigest | None = None  # made when the kept values are dropped

    def add(self, values: pl.Series) -> None:
        """One part's values; nulls are skipped."""
        values = values.drop_nulls().cast(pl.Float64)
        if len(values) == 0:
            return
        self.merge_moments(values)
        if self.kept is not None:
            self.kept.append(values)
            if self.count <= EXACT_LIMIT:
                return
            values, self.kept = pl.concat(self.kept), None
        # Any: from_values reads a NumPy array directly (its stub says Sequence[float]).
        array: Any = values.to_numpy()
        digest = TDigest.from_values(array, max_centroids=CENTROIDS)
        if self.digest is None:
            self.digest = digest
        else:
            self.digest.merge_inplace(digest)

    def merge_moments(self, values: pl.Series) -> None:
        """Count, mean and sum of squared deviations, merged with this part's (Chan et al.)."""
        n, mean = len(values), float(cast(float, values.mean()))
        m2 = float(((values - mean) ** 2).sum())
        total, delta = self.count + n, mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    def exact(self) -> pl.Series | None:
        """All the values, while they are kept."""
        if self.kept is None:
            return None
        return pl.concat(self.kept) if self.kept else pl.Series([], dtype=pl.Float64)

    def statistics(self, impute: str) -> tuple[float, float, float]:
        """``numeric_statistics`` of all the values added."""
        values = self.exact()
        if values is not None:
            return numeric_statistics(values, impute)
        assert self.digest is not None  # past EXACT_LIMIT there are values
        std = (self.m2 / (self.count - 1)) ** 0.5
        fill = self.digest.quantile(0.5) if impute == "median" else self.mean
        return fill, self.mean, std if std > 1e-8 else 1.0

    def summary(self) -> dict[str, list[float]] | None:
        """``drift.numeric_summary`` of all the values added; None when there were none."""
        values = self.exact()
        if values is not None:
            return numeric_summary(values.to_numpy()) if len(values) else None
        digest = self.digest
        assert digest is not None

        def shares(inner: np.ndarray) -> np.ndarray:
            return np.diff([0.0, *digest.cdf_vec(inner.tolist()), 1.0])

        return binned_summary(np.asarray(digest.quantile_vec(DECILES.tolist())), shares)
