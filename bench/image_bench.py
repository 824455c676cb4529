"""Image-folder ingestion, in images per second.

    .venv/bin/python bench/image_bench.py [--images 3000] [--size 64]

Writes ``--images`` PNG files (``--size`` square, RGB noise) and a CSV that points at them
into one landing day, then times ``read_landing_file`` on it (Pillow decode, convert to
grayscale, resize to 28x28), as ``raw_batches`` runs it. Decoding is per file, in Python.
"""

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from lepton_core.rows import read_landing_file
from lepton_core.spec import DatasetSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    spec = DatasetSpec.model_validate(
        {
            "name": "bench",
            "task": "regression",
            "id_column": "id",
            "label_column": "y",
            "image": {"column": "path", "size": [28, 28], "channels": 1},
        }
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        day = Path(tmp)
        (day / "img").mkdir()
        for i in range(args.images):
            pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(day / "img" / f"{i:05d}.png")
        labels = pl.DataFrame(
            {
                "id": [f"i{i}" for i in range(args.images)],
                "y": [float(i) for i in range(args.images)],
                "path": [f"img/{i:05d}.png" for i in range(args.images)],
            }
        )
        buf = io.BytesIO()
        labels.write_csv(buf)
        started = time.perf_counter()
        frame, _ = read_landing_file(
            "labels.csv", buf.getvalue(), spec, lambda p: (day / p).read_bytes()
        )
        seconds = time.perf_counter() - started
    assert frame["_parse_errors"].list.len().sum() == 0
    results = {
        "images": args.images,
        "source_size": f"{args.size}x{args.size} RGB PNG",
        "seconds": round(seconds, 3),
        "images_per_s": round(args.images / seconds, 1),
    }
    for key, value in results.items():
        print(f"  {key:14s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
