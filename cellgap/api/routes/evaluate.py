"""POST /v1/evaluate: the metrics of `cellgap evaluate` for uploaded ground truth and prediction label maps.

Two body forms: multipart .npy uploads in the folder layout (`gt` and `pred`, one file per image,
(H,W) instance ids or (H,W,2) ids + classes, paired by file name, else by position), or JSON arrays
for small tiles (`EvaluateArrays`). Scoring uses `decoder.metrics` only.
"""
from __future__ import annotations

import json
from enum import IntEnum
from pathlib import PurePosixPath
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from cellgap.api.deps import SettingsDep, require_api_key
from cellgap.api.errors import InvalidInputError, TooLargeError, UnsupportedMediaError
from cellgap.api.routes.common import describe_upload, error_responses, read_upload, upload_name
from cellgap.api.schemas import EvaluateArrays, ImagePair, LabelArrays, StrictQuery
from cellgap.api.settings import Settings
from cellgap.api.uploads import Limits, decode_labels, labels_from_array
from cellgap.featurestore.datasets.base import LabelledImage
from cellgap.metrics import RADIUS_AT_MAGNIFICATION, MetricsReport
from cellgap.metrics.evaluate import pair_images, score_pairs

router = APIRouter(prefix="/v1", tags=["evaluate"], dependencies=[Depends(require_api_key)])

_MULTIPART_SCHEMA = {
    "type": "object", "required": ["gt", "pred"],
    "properties": {
        "gt": {"type": "array", "items": {"type": "string", "format": "binary"},
               "description": "ground-truth .npy label maps, one per image: (H,W) ids or (H,W,2) ids + classes"},
        "pred": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "predicted .npy label maps, same layout; paired with gt by file name, else by order"},
        "class_names": {"type": "string", "description": 'optional, as classes.json: ["tumour", "immune"] or '
                                                         '{"1": "tumour", "2": "immune"}'},
    },
}
OPENAPI_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
    "application/json": {"schema": {"$ref": "#/components/schemas/EvaluateArrays"}},
}}}

Pair = tuple[LabelledImage, LabelledImage]


class Magnification(IntEnum):
    """Objective magnification; sets the detection radius as HoVer-Net's evaluation does."""

    x40 = 40
    x20 = 20


def _array(rows: list[list[int]], what: str) -> np.ndarray:
    try:
        array = np.array(rows, dtype=np.int64)
    except (ValueError, OverflowError) as error:
        raise InvalidInputError(f"{what}: not a rectangular array of integer ids ({error})",
                                code="invalid_labels") from None
    if array.ndim != 2:
        raise InvalidInputError(f"{what}: expected rows of equal length, got shape {array.shape}", code="invalid_labels")
    if array.size == 0:
        raise InvalidInputError(f"{what}: the label map is empty (shape {array.shape})", code="empty")
    return array


def _json_labels(labels: LabelArrays, limits: Limits, what: str, name: str) -> LabelledImage:
    instances = _array(labels.instances, f"{what} instances")
    if instances.size > limits.max_pixels:
        raise TooLargeError(f"{what}: {instances.size} pixels is more than the limit of {limits.max_pixels}",
                            code="image_too_large")
    if labels.classes is not None:
        classes = _array(labels.classes, f"{what} classes")
        if classes.shape != instances.shape:
            raise InvalidInputError(f"{what}: class map shape {classes.shape} differs from the instance map "
                                    f"{instances.shape}", code="shape_mismatch")
        instances = np.stack([instances, classes], axis=-1)
    ids, class_map = labels_from_array(instances, what)
    return LabelledImage(name=name, instances=ids, classes=class_map)


def pairs_from_json(body: EvaluateArrays, settings: Settings) -> tuple[list[Pair], tuple[str, ...]]:
    if len(body.images) > settings.max_files:
        raise TooLargeError(f"{len(body.images)} images in one request; at most {settings.max_files}",
                            code="too_many_files")
    limits = Limits(settings.max_image_pixels)
    pairs = []
    for index, image in enumerate(body.images):
        name = image.name if image.name is not None else str(index)
        gt = _json_labels(image.gt, limits, f"images[{index}].gt", name)
        pred = _json_labels(image.pred, limits, f"images[{index}].pred", name)
        pairs.append((LabelledImage(name, gt.instances, gt.classes, image.tissue), pred))
    return pairs, tuple(body.class_names)


class _TooManyObjects(Exception):
    pass


# (keys one of the body's objects may have, keys of which it has at least one): the body, a pair, a label map
_OBJECT_FORMS = ((frozenset({"images", "class_names"}), frozenset({"images"})),
                 (frozenset({"name", "tissue", "gt", "pred"}), frozenset({"gt", "pred"})),
                 (frozenset({"instances", "classes"}), frozenset({"instances"})))


def _plausible(keys: set[str]) -> bool:
    """Whether a JSON object could be one of the body's (the body, a pair, a label map), judged by its keys."""
    return any(keys <= allowed and bool(keys & needed) for allowed, needed in _OBJECT_FORMS)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _map_pixels(value: Any) -> int:
    """Pixels of a label map given as JSON rows (a row that is not a list counts as one)."""
    return sum(len(row) if isinstance(row, list) else 1 for row in value) if isinstance(value, list) else 0


def parse_json_body(raw: bytes, settings: Settings) -> EvaluateArrays:
    """The JSON form of an evaluate request, with its limits applied while it is parsed: the parse stops at
    the first JSON object beyond what `max_files` images hold (3 each), the image count and each label map's
    pixels are checked before anything is validated, and each image is validated on its own (short calls,
    so the interpreter lock passes between them and the event loop keeps answering)."""
    most = 1 + 3 * settings.max_files  # the body, and per image: the pair, its gt and its pred
    objects, misplaced = 0, False

    def counted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects, misplaced
        objects += 1
        value = dict(pairs)
        misplaced = misplaced or not _plausible(set(value))
        if objects > most:
            raise _TooManyObjects
        return value

    try:
        data = json.loads(raw, object_pairs_hook=counted, parse_constant=_reject_constant)
    except _TooManyObjects:
        if misplaced:  # not the form of the body: an invalid request rather than one with too many images
            raise InvalidInputError("the JSON body does not have the form of an evaluate request (objects where "
                                    "none belong)", code="invalid_request") from None
        raise TooLargeError(f"more JSON objects than {settings.max_files} images hold: at most {settings.max_files} "
                            "images in one request", code="too_many_files") from None
    except RecursionError:
        raise InvalidInputError("the JSON body is nested too deeply", code="invalid_request") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(error, "pos", 0)),
                                       "msg": f"JSON decode error: {error}"}]) from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        return _validated(EvaluateArrays, data, ())
    if len(images) > settings.max_files:
        raise TooLargeError(f"{len(images)} images in one request; at most {settings.max_files}", code="too_many_files")
    for index, image in enumerate(images):
        for side in ("gt", "pred"):
            maps = image.get(side) if isinstance(image, dict) else None
            for key in ("instances", "classes"):
                pixels = _map_pixels(maps.get(key)) if isinstance(maps, dict) else 0
                if pixels > settings.max_image_pixels:
                    raise TooLargeError(f"images[{index}].{side}.{key}: {pixels} pixels is more than the limit of "
                                        f"{settings.max_image_pixels}", code="image_too_large")
    checked = [_validated(ImagePair, image, ("images", index)) for index, image in enumerate(images)]
    return _validated(EvaluateArrays, {**data, "images": checked}, ())


def _validated(model: Any, data: Any, where: tuple[str | int, ...]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *where, *e["loc"])}
                                      for e in error.errors(include_input=False)]) from None


async def read_json_body(request: Request, settings: Settings) -> bytes:
    """The body, at most `max_json_bytes` of it: a larger declared length is refused before a byte is read,
    a longer stream as soon as it passes the limit."""
    limit = settings.max_json_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the JSON body ({declared} bytes) is larger than the limit of {limit} bytes "
                            "(send large label maps as .npy files)", headers={"Connection": "close"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"the JSON body is larger than the limit of {limit} bytes (send large label maps as "
                                ".npy files)", headers={"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


def parse_class_names(text: str) -> tuple[str, ...]:
    """Class names as in a folder's classes.json: a list of names or {"1": name, ...}."""
    try:
        content = json.loads(text)
        if isinstance(content, dict):
            ids = sorted(int(k) for k in content)
            if ids != list(range(1, len(ids) + 1)):
                raise ValueError(f"class ids must be 1..K, got {ids[:5]}")
            content = [content[str(i)] for i in ids]
        if not isinstance(content, list) or not all(isinstance(n, str) for n in content) or len(content) > 255:
            raise ValueError("expected a list of at most 255 names or an object id -> name")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise InvalidInputError(f"field 'class_names': {error}", code="invalid_class_names") from None
    return tuple(content)


async def pairs_from_form(request: Request, settings: Settings) -> tuple[list[Pair], tuple[str, ...]]:
    limits = Limits(settings.max_image_pixels)
    async with request.form(max_files=2 * settings.max_files, max_fields=16) as form:
        sides: dict[str, list[LabelledImage]] = {}
        for field in ("gt", "pred"):
            uploads = form.getlist(field)
            if not uploads:
                raise InvalidInputError(f"missing field {field!r}: one .npy file per image", code="missing_field")
            if len(uploads) > settings.max_files:
                raise TooLargeError(f"{len(uploads)} {field} files; at most {settings.max_files}", code="too_many_files")
            images = []
            for position, upload in enumerate(uploads):
                if not isinstance(upload, UploadFile):
                    raise InvalidInputError(f"field {field!r}: expected a .npy file upload, got a text value",
                                            code="not_an_array")
                data = await read_upload(upload, field, settings)
                ids, classes = await run_in_threadpool(decode_labels, data, limits, describe_upload(upload, field))
                request.app.state.memory.note(len(data) + ids.nbytes + (0 if classes is None else classes.nbytes))
                name = PurePosixPath(upload_name(upload)).stem or str(position)
                images.append(LabelledImage(name=name, instances=ids, classes=classes))
            sides[field] = images
        names = form.get("class_names")
        if names is not None and not isinstance(names, str):
            raise InvalidInputError("field 'class_names' must be text (JSON), not a file", code="invalid_class_names")
        class_names = parse_class_names(names) if names else ()
    gt, pred = sides["gt"], sides["pred"]
    return [(gt[i], pred[j]) for i, j in pair_images([g.name for g in gt], [p.name for p in pred])], class_names


def score(pairs: list[Pair], *, class_names: tuple[str, ...], n_classes: int | None, radius: float,
          match_iou: float) -> MetricsReport:
    """The accumulate-then-reduce path of `cellgap evaluate`, on in-memory label maps."""
    for truth, guess in pairs:  # all checked before any is scored
        if truth.instances.shape != guess.instances.shape:
            raise InvalidInputError(f"image {truth.name!r}: ground truth is {truth.instances.shape[0]} x "
                                    f"{truth.instances.shape[1]} but the prediction is {guess.instances.shape[0]} x "
                                    f"{guess.instances.shape[1]}", code="shape_mismatch")
    return score_pairs(pairs, class_names=class_names, n_classes=n_classes, radius=radius, match_iou=match_iou)


class EvaluateQuery(StrictQuery):
    magnification: Magnification | None = Field(None, description="sets the radius: 12 px at 40x, 6 px at 20x")
    radius: float | None = Field(None, gt=0, le=10000, description="centroid pairing radius in pixels")
    match_iou: float = Field(0.5, ge=0, lt=1, description="PQ pairs need IoU strictly above this")
    classes: int | None = Field(None, ge=1, le=255, description="number of classes K")


@router.post("/evaluate", response_model=MetricsReport, openapi_extra=OPENAPI_BODY,
             responses=error_responses(400, 401, 413, 415, 422), summary="Metrics of a prediction against ground truth")
async def evaluate(
    request: Request,
    settings: SettingsDep,
    query: Annotated[EvaluateQuery, Query()],
) -> Any:
    """PQ, AJI, Dice, detection F1, CoNIC mPQ+/R², PanNuke mPQ/bPQ: the same names as `cellgap evaluate --json`.

    Send multipart `.npy` files (`gt`, `pred`; one per image) or a JSON body of arrays (small tiles).
    """
    magnification, radius, match_iou, classes = query.magnification, query.radius, query.match_iou, query.classes
    if magnification is not None and radius is not None:
        raise InvalidInputError("give either magnification or radius, not both", code="conflicting_parameters")
    reach = radius if radius is not None else RADIUS_AT_MAGNIFICATION[int(magnification or 40)]
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        raw = await read_json_body(request, settings)
        body = await run_in_threadpool(parse_json_body, raw, settings)
        del raw
        pairs, class_names = await run_in_threadpool(pairs_from_json, body, settings)
    elif content_type == "multipart/form-data":
        pairs, class_names = await pairs_from_form(request, settings)
    else:
        raise UnsupportedMediaError(f"send multipart/form-data (.npy files) or application/json, not "
                                    f"{content_type or 'no content type'}", code="unsupported_media_type")
    return await run_in_threadpool(lambda: score(pairs, class_names=class_names, n_classes=classes, radius=reach,
                                                 match_iou=match_iou))
