"""One model version, as the server holds it: loaded, warmed up and checked before it serves.

A version is named by its model prefix (``compressed/<dataset>-<run>/<variant>``) without its
first part and with ``/`` as ``.`` (``<dataset>-<run>.<variant>``), so it fits a URL path segment
(``/v2/models/<name>/versions/<version>``).
"""

import base64
import functools
import itertools
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from torch import nn

from lepton_core.images import inline_image
from lepton_core.models import load_model, model_inputs, model_scores
from lepton_core.privacy import check_key, protect
from lepton_core.rows import checked_features, refusal
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore


def version_of(prefix: str) -> str:
    return prefix.split("/", 1)[-1].replace("/", ".")


@dataclass(frozen=True)
class Scored:
    """What a model said of some rows: labels (the user's) with their probabilities, or
    regression values in the target's unit."""

    predictions: list[Any]
    probabilities: list[list[float]] | None
    rows: pl.DataFrame  # as typed for the model (personal data hashed or dropped)


@dataclass(frozen=True)
class ServedModel:
    prefix: str
    info: dict[str, Any]
    model: nn.Module
    pii_key: bytes

    @functools.cached_property
    def version(self) -> str:
        return version_of(self.prefix)

    @functools.cached_property
    def spec(self) -> DatasetSpec:
        """Validated once: every request reads it."""
        return DatasetSpec.model_validate(self.info["spec"])

    @classmethod
    def load(
        cls,
        store: ArtifactStore,
        prefix: str,
        pii_key: str | None,
        runtime: str,
        files: dict[str, str] | None = None,
    ) -> "ServedModel":
        """Load a version (weights only, its bytes checked against ``files``, the champion
        record's digests), check the personal-data key its spec needs
        (``LEPTON_PII_KEY``), then warm it up and check it on one row (``check_rows``): a
        model that fails any of these never serves."""
        if runtime == "onnx":
            from lepton_core.edge import load_onnx_model

            model, info = load_onnx_model(store, prefix)
        else:
            model, info = load_model(store, prefix, files)
        spec = DatasetSpec.model_validate(info["spec"])
        served = cls(prefix, info, model, check_key(spec, pii_key, "LEPTON_PII_KEY"))
        served.check_rows()
        return served

    def check_rows(self) -> None:
        """Score one row of zeros through the whole path (typing, the model's dtype, the
        output's shape): the warm-up and check before a version serves."""
        spec = self.spec
        row: dict[str, str] = {c: "0" for c in spec.feature_columns}
        row.update({c: "" for c in spec.categorical_columns})
        if spec.image is not None:
            row[spec.image.column] = blank_png(spec.image.shape)
        (result,) = self.score([pl.DataFrame({c: [v] for c, v in row.items()})])
        if isinstance(result, Exception):
            raise result
        width = len(result.probabilities[0]) if result.probabilities is not None else 1
        if len(result.predictions) != 1 or width != len(spec.classes or [0]):
            raise ValueError(
                f"{self.prefix}: one row gave {len(result.predictions)} predictions of "
                f"{width} outputs; expected one of {len(spec.classes or [0])}"
            )

    @torch.no_grad()
    def score(self, frames: list[pl.DataFrame]) -> list["Scored | RowsRefused"]:
        """Type and score several requests' rows (text frames of the feature columns, from
        ``rows.json_frame``) in one pass: one typing query and one forward for the batch. A
        request with a row that breaks a rule gets ``RowsRefused`` naming it; the others are
        scored."""
        batch = pl.concat(frames) if len(frames) > 1 else frames[0]
        typed, broken = checked_features(
            protect(batch, self.spec, self.pii_key), self.spec, inline_image
        )
        starts = [0]
        for frame in frames:
            starts.append(starts[-1] + frame.height)
        problems = [refusal(broken.slice(a, b - a)) for a, b in itertools.pairwise(starts)]
        keep = [p is None for p, f in zip(problems, frames, strict=True) for _ in range(f.height)]
        good = typed if all(keep) else typed.filter(pl.Series(keep))
        scores = self.forward(model_inputs(self.info, good)) if good.height else None
        results: list[Scored | RowsRefused] = []
        start = 0
        for problem, frame in zip(problems, frames, strict=True):
            if problem is not None:
                results.append(RowsRefused(problem))
                continue
            assert scores is not None
            part, rows = scores[start : start + frame.height], good.slice(start, frame.height)
            start += frame.height
            results.append(self.scored(part, rows))
        return results

    def scored(self, scores: torch.Tensor, rows: pl.DataFrame) -> Scored:
        """Regression values, or the user's labels with their probabilities."""
        classes = self.spec.classes
        if classes is None:
            return Scored(scores.tolist(), None, rows)
        return Scored([classes[k] for k in scores.argmax(1).tolist()], scores.tolist(), rows)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The model's scores for a batch. Dynamic int8 quantizes activations with one scale per
        batch, so a row's answer would depend on the rows batched with it (other clients'
        requests): such a model scores each row on its own, every other model in one pass."""
        if self.info.get("quantization") != "int8_dynamic":
            return model_scores(self.model, self.info, inputs)
        rows = inputs[0].shape[0]
        return torch.cat(
            [
                model_scores(self.model, self.info, [x[i : i + 1] for x in inputs])
                for i in range(rows)
            ]
        )


class RowsRefused(ValueError):
    """A request's rows break a rule (the message names the row, the field and the rule)."""


def blank_png(shape: list[int]) -> str:
    """A black image of the spec's shape, as a request would send it (base64 PNG)."""
    import io

    from PIL import Image

    channels, height, width = shape
    buf = io.BytesIO()
    Image.new("L" if channels == 1 else "RGB", (width, height)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
