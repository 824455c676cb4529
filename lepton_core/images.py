"""Image features: a column of file paths relative to the landing day's folder, decoded with
Pillow, converted to the spec's channels, resized to its size and kept as uint8 bytes.

A path is data, so it is checked before use: relative, plain segments only (letters, digits,
``.``, ``_``, ``-``; no ``..``, no absolute path). A missing, unsafe or undecodable file makes
that row's error, which ingestion turns into a quarantine rule naming the file.
"""

import base64
import binascii
import io
import re
from collections.abc import Callable

from PIL import Image

from lepton_core.spec import ImageSpec

IMAGE_PIXELS = "_image_pixels"  # decoded, resized image bytes (uint8, C×H×W) per row
SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
MODES = {1: "L", 3: "RGB"}


def unsafe_path(path: str) -> str | None:
    """Why ``path`` must not be opened, or None when it is a plain relative path."""
    segments = path.split("/")
    if path.startswith("/") or "\\" in path or not all(SEGMENT.match(s) for s in segments):
        return "unsafe path (relative, letters, digits, '.', '_', '-' only)"
    if any(".." in s for s in segments):
        return "unsafe path ('..')"
    return None


def decode_image(data: bytes, spec: ImageSpec) -> bytes:
    """C×H×W uint8 bytes of one image file; raises ValueError when it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            resized = image.convert(MODES[spec.channels]).resize(
                (spec.size[1], spec.size[0]), Image.Resampling.BILINEAR
            )
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"undecodable image: {exc}") from exc
    pixels = resized.tobytes()  # H×W×C, interleaved
    if spec.channels == 1:
        return pixels
    height, width = spec.size
    planes = [pixels[c::3] for c in range(3)]  # C×H×W: one plane per channel
    assert all(len(p) == height * width for p in planes)
    return b"".join(planes)


def inline_image(value: str) -> bytes:
    """An image sent inline (a request to the server): its file's bytes in base64."""
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64 ({exc})") from exc


def decode_column(
    paths: list[str | None], read: Callable[[str], bytes], spec: ImageSpec
) -> tuple[list[bytes | None], list[str | None]]:
    """(pixels, error) per row; ``read`` gets a checked relative path and returns its bytes,
    or is ``inline_image``, whose values are the images themselves (never opened as paths,
    and not quoted in an error)."""
    pixels: list[bytes | None] = []
    errors: list[str | None] = []
    inline = read is inline_image
    for row, path in enumerate(paths):
        if path is None:
            pixels.append(None)
            errors.append(None)  # a null path is the not-null rule's to report
            continue
        problem = None if inline else unsafe_path(path)
        try:
            if problem:
                raise ValueError(problem)
            pixels.append(decode_image(read(path), spec))
            errors.append(None)
        except FileNotFoundError:
            pixels.append(None)
            errors.append(f"image({spec.column}): missing file {path}")
        except ValueError as exc:
            pixels.append(None)
            where = f"row {row}" if inline else path
            errors.append(f"image({spec.column}): {where}: {exc}")
    return pixels, errors
