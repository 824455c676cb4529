"""Write the churn example's landing files: synthetic customers over a few days.

    python examples/tabular_churn/make_data.py LANDING_DIR [--days 4 --end 2026-01-04]

Half the days land as CSV, half as Parquet; about 10% of tenures and 5% of regions are
missing. Churn ("yes" or "no") follows charges, tenure, plan and region, with 5% of labels
flipped.
"""

import argparse
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

PLANS = ["basic", "plus", "pro"]
REGIONS = ["north", "south", "east", "west"]


def customers(count: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.uniform(0, 72, count).round(1)
    charges = rng.uniform(20, 120, count).round(2)
    plan = rng.integers(0, 3, count)
    region = rng.integers(0, 4, count)
    logit = 0.06 * (charges - 70) - 0.08 * (tenure - 36) + (1 - plan) * 1.5 + (region == 1)
    churned = (logit > 0) ^ (rng.random(count) < 0.05)
    return pl.DataFrame(
        {
            "customer_id": [f"c-{seed}-{i:05d}" for i in range(count)],
            "churned": ["yes" if c else "no" for c in churned],
            "tenure_months": pl.Series(tenure).set(pl.Series(rng.random(count) < 0.1), None),
            "monthly_charges": charges,
            "plan": [PLANS[p] for p in plan],
            "region": pl.Series([REGIONS[r] for r in region]).set(
                pl.Series(rng.random(count) < 0.05), None
            ),
        }
    )


def write_landing(landing: Path, days: int = 4, end: date = date(2026, 1, 4), rows: int = 500):
    for i in range(days):
        day = end - timedelta(days=days - 1 - i)
        folder = landing / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        frame = customers(rows, seed=i)
        if i % 2:
            frame.write_parquet(folder / "customers.parquet")
        else:
            frame.write_csv(folder / "customers.csv")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip())
    parser.add_argument("landing", type=Path)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2026, 1, 4))
    args = parser.parse_args()
    write_landing(args.landing, args.days, args.end)
