"""Write the image example's landing files: PNG discs and a CSV that points at them.

    python examples/image_discs/make_data.py LANDING_DIR [--days 4 --end 2026-01-04]

Each day folder holds ``labels.csv`` (``image_id, path, camera, radius``) and
``images/<id>.png``: a white disc of the given radius on black, 20x20 pixels (Lepton resizes
to 16x16). ``camera`` names the device that took the picture (``cam-a`` or ``cam-b``).
"""

import argparse
import csv
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def disc(radius: float, cx: float, cy: float) -> Image.Image:
    image = Image.new("L", (20, 20), 0)
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    return image


CAMERAS = ("cam-a", "cam-b")


def write_landing(landing: Path, days: int = 4, end: date = date(2026, 1, 4), rows: int = 150):
    for i in range(days):
        rng = np.random.default_rng(i)
        folder = landing / (end - timedelta(days=days - 1 - i)).isoformat()
        (folder / "images").mkdir(parents=True, exist_ok=True)
        with (folder / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_id", "path", "camera", "radius"])
            for j in range(rows):
                radius = round(float(rng.uniform(2, 8)), 3)
                cx, cy = rng.uniform(8, 12, 2)
                name = f"images/d{i}-{j:04d}.png"
                disc(radius, cx, cy).save(folder / name)
                camera = CAMERAS[j % len(CAMERAS)]
                writer.writerow([f"disc-{end.toordinal()}-{i}-{j:04d}", name, camera, radius])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip())
    parser.add_argument("landing", type=Path)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2026, 1, 4))
    args = parser.parse_args()
    write_landing(args.landing, args.days, args.end)
