"""Request and response bodies: the Open Inference Protocol (KServe v2) and ``/predict``.

v2 (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/): one input
tensor per feature column, named as in the dataset spec, shape ``[B]`` or ``[B, 1]``;
numeric features ``FP64`` (any FP or INT type is accepted), categorical features ``BYTES``
(text), an image ``BYTES`` holding the image file base64-encoded. Outputs: for classes,
``label`` [B] (the user's labels) and ``probabilities`` [B, classes]; for regression,
``prediction`` [B] in the target's unit.

``/predict`` takes ``{"rows": [{feature: value, ...}, ...]}`` and answers
``{"model_name", "model_version", "predictions": [...]}`` (plus ``"probabilities"`` for
classes). Both are turned into one column per feature and typed by ``rows.json_frame`` and
``typed_features``, the code that types landing files.

Every error is ``BadRequest`` with a message naming the field and what was expected,
answered in the protocol's error form ``{"error": "..."}``.
"""

import json
from typing import Any

from lepton_core.serving.model import Scored, ServedModel
from lepton_core.spec import DatasetSpec

NUMERIC_TYPES = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64"}
NUMERIC_TYPES |= {"UINT8", "UINT16", "UINT32", "UINT64"}
V2_TYPES = NUMERIC_TYPES | {"BYTES", "BOOL"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, kind: str = "bad_input") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _no_constants(name: str) -> Any:
    raise BadRequest(
        f"malformed JSON: {name} is not JSON; send null for a missing value", kind="bad_json"
    )


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}", kind="bad_json") from exc


def predict_columns(body: Any) -> dict[str, list[Any]]:
    """``{"rows": [{...}, ...]}`` as one list per column; a row without a field has null there
    (the typing then names the row when the spec does not allow it)."""
    rows = body.get("rows") if isinstance(body, dict) else None
    if not isinstance(rows, list) or not rows:
        raise BadRequest('expected {"rows": [{feature: value, ...}, ...]} with at least one row')
    names: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(
                f"rows[{i}]: expected an object of feature values, got {type(row).__name__}"
            )
        names.update(dict.fromkeys(row))
    return {name: [row.get(name) for row in rows] for name in names}


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    return [v for item in data for v in _flat(item)]


def v2_columns(body: Any) -> dict[str, list[Any]]:
    """A v2 inference request's inputs as one list per column, checked against their shapes
    and datatypes."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    columns: dict[str, list[Any]] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest(f"inputs[{i}]: expected an object with a name")
        name, shape, datatype = tensor["name"], tensor.get("shape"), tensor.get("datatype")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadRequest(f"input {name}: shape must be a list of sizes, got {shape!r}")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise BadRequest(
                f"input {name}: shape must be [B] or [B, 1] (one value a row), got {shape}"
            )
        if datatype not in V2_TYPES:
            raise BadRequest(
                f"input {name}: datatype {datatype!r} is not one of {sorted(V2_TYPES)}"
            )
        data = _flat(tensor.get("data"))
        if len(data) != shape[0]:
            raise BadRequest(
                f"input {name}: shape {shape} holds {shape[0]} values, data has {len(data)}"
            )
        check_datatype(name, datatype, data)
        columns[name] = data
    sizes = {name: len(values) for name, values in columns.items()}
    if len(set(sizes.values())) > 1:
        raise BadRequest(f"inputs differ in batch size: {sizes}")
    return columns


def check_datatype(name: str, datatype: str, data: list[Any]) -> None:
    expected: tuple[type, ...] = (
        (int, float) if datatype in NUMERIC_TYPES else (bool,) if datatype == "BOOL" else (str,)
    )
    for row, value in enumerate(data):
        wrong = value is not None and (
            not isinstance(value, expected)
            or (datatype in NUMERIC_TYPES and isinstance(value, bool))
            or (datatype.startswith(("INT", "UINT")) and isinstance(value, float))
        )
        if wrong:
            raise BadRequest(
                f"input {name}: row {row}: datatype {datatype} expects "
                f"{'/'.join(t.__name__ for t in expected)}, got {value!r:.40}"
            )


def input_metadata(spec: DatasetSpec) -> list[dict[str, Any]]:
    numeric = [{"name": c, "datatype": "FP64", "shape": [-1]} for c in spec.feature_columns]
    text = [{"name": c, "datatype": "BYTES", "shape": [-1]} for c in spec.categorical_columns]
    image = (
        [
            {
                "name": spec.image.column,
                "datatype": "BYTES",
                "shape": [-1],
                "parameters": {"content": "base64 image file"},
            }
        ]
        if spec.image
        else []
    )
    return numeric + text + image


def label_datatype(spec: DatasetSpec) -> str:
    first = (spec.classes or [""])[0]
    return "BOOL" if isinstance(first, bool) else "INT64" if isinstance(first, int) else "BYTES"


def output_metadata(spec: DatasetSpec) -> list[dict[str, Any]]:
    if spec.classes is None:
        return [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
    return [
        {"name": "label", "datatype": label_datatype(spec), "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(spec.classes)]},
    ]


def model_metadata(served: ServedModel) -> dict[str, Any]:
    spec = served.spec
    return {
        "name": spec.name,
        "versions": [served.version],
        "platform": served.info.get("runtime", "pytorch"),
        "inputs": input_metadata(spec),
        "outputs": output_metadata(spec),
        "parameters": {"model": served.prefix, "task": spec.task},
    }


def v2_response(served: ServedModel, scored: Scored, request_id: Any) -> dict[str, Any]:
    spec = served.spec
    rows = len(scored.predictions)
    if scored.probabilities is None:
        outputs = [
            {"name": "prediction", "datatype": "FP64", "shape": [rows], "data": scored.predictions}
        ]
    else:
        outputs = [
            {
                "name": "label",
                "datatype": label_datatype(spec),
                "shape": [rows],
                "data": scored.predictions,
            },
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [rows, len(spec.classes or [])],
                "data": [p for row in scored.probabilities for p in row],
            },
        ]
    response = {"model_name": spec.name, "model_version": served.version, "outputs": outputs}
    return response if request_id is None else {**response, "id": request_id}


def predict_response(served: ServedModel, scored: Scored) -> dict[str, Any]:
    response: dict[str, Any] = {
        "model_name": served.spec.name,
        "model_version": served.version,
        "predictions": scored.predictions,
    }
    if scored.probabilities is not None:
        response["probabilities"] = scored.probabilities
    return response
