"""POST /v1/evaluate: the same numbers and names as `cellgap evaluate`, known answers, and refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cellgap.api.app import create_app
from tests.api.conftest import make_settings, npy_bytes
from tests.conftest import synthetic_tiles


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(make_settings())) as test_client:  # evaluate needs no model
        yield test_client


@pytest.fixture(scope="module")
def maps():
    """Three synthetic tiles: GT (instances, classes) and a perturbed prediction (a cell dropped, classes swapped)."""
    pairs = []
    for tile in synthetic_tiles(3, seed=7):
        gt = np.stack([tile.instances, tile.classes.astype(np.int32)], -1)
        pred = gt.copy()
        pred[..., 0][pred[..., 0] == 1] = 0
        pred[..., 1][pred[..., 0] == 0] = 0
        swap = pred[..., 0] == 2
        pred[..., 1][swap] = 3 - np.minimum(pred[..., 1][swap], 2)
        pairs.append((gt, pred))
    return pairs


def _multipart(pairs, order=None):
    order = order or range(len(pairs))
    files = [("gt", (f"tile{i}.npy", npy_bytes(gt), "application/octet-stream")) for i, (gt, _) in enumerate(pairs)]
    files += [("pred", (f"tile{i}.npy", npy_bytes(pairs[i][1]), "application/octet-stream")) for i in order]
    return files


def test_multipart_answers_exactly_what_the_cli_writes(client, maps, tmp_path):
    from cellgap.cli import main

    for side, index in (("gt", 0), ("pred", 1)):
        (tmp_path / side / "labels").mkdir(parents=True)
        for i, pair in enumerate(maps):
            np.save(tmp_path / side / "labels" / f"tile{i}.npy", pair[index])
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", f"folder:{tmp_path / 'gt'}", "--pred", f"folder:{tmp_path / 'pred'}",
                 "--magnification", "20", "--json", str(out)]) == 0
    expected = json.loads(out.read_text())
    answer = client.post("/v1/evaluate?magnification=20", files=_multipart(maps, order=[2, 0, 1]))  # paired by name
    assert answer.status_code == 200, answer.text
    assert answer.json() == expected
    assert expected["detection"]["radius"] == 6.0 and expected["n_images"] == 3
    assert 0 < expected["instance"]["pq"] < 1


def test_json_arrays_with_known_answers(client):
    gt = [[0, 1, 1, 0], [0, 1, 1, 0], [2, 2, 0, 0], [2, 2, 0, 0]]
    perfect = client.post("/v1/evaluate", json={"images": [{"gt": {"instances": gt}, "pred": {"instances": gt}}]})
    assert perfect.status_code == 200, perfect.text
    body = perfect.json()
    assert body["instance"]["pq"] == pytest.approx(1.0, abs=1e-5)  # the reference's epsilon in SQ
    assert body["instance"]["aji"] == pytest.approx(1.0) and body["detection"]["f1_d"] == 1.0
    assert body["conic"]["mpq_plus"] is None  # untyped: class metrics are null, never NaN
    half = [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    missed = client.post("/v1/evaluate?radius=3", json={"images": [{"gt": {"instances": gt}, "pred": {"instances": half}}]})
    metrics = missed.json()
    assert metrics["instance"]["dq"] == pytest.approx(2 / 3, abs=1e-5)  # TP 1, FN 1: 1 / (1 + 0.5)
    assert metrics["detection"]["recall_d"] == 0.5 and metrics["detection"]["radius"] == 3.0
    typed = client.post("/v1/evaluate", json={
        "images": [{"gt": {"instances": gt, "classes": [[0, 1, 1, 0], [0, 1, 1, 0], [2, 2, 0, 0], [2, 2, 0, 0]]},
                    "pred": {"instances": gt, "classes": [[0, 1, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]]}}],
        "class_names": ["tumour", "immune"]})
    body = typed.json()
    assert body["class_names"] == {"1": "tumour", "2": "immune"}
    assert body["detection"]["acc_type"] == 0.5


def test_class_names_from_a_form_field(client, maps):
    files = _multipart(maps[:1]) + [("class_names", (None, '{"1": "a", "2": "b", "3": "c"}'))]
    answer = client.post("/v1/evaluate", files=files)
    assert answer.status_code == 200, answer.text
    assert answer.json()["class_names"] == {"1": "a", "2": "b", "3": "c"}


def _json_pair(gt, pred):
    return {"images": [{"gt": {"instances": gt}, "pred": {"instances": pred}}]}


BAD = [
    ("mismatched shapes", {"json": _json_pair([[0, 1], [1, 1]], [[0, 1, 1]])}, "", 422, "shape_mismatch"),
    ("class map shape", {"json": {"images": [{"gt": {"instances": [[1, 1]], "classes": [[1]]},
                                              "pred": {"instances": [[1, 1]]}}]}}, "", 422, "shape_mismatch"),
    ("ragged rows", {"json": _json_pair([[0, 1], [1]], [[0, 1], [1]])}, "", 422, "invalid_labels"),
    ("negative ids", {"json": _json_pair([[-1, 1]], [[0, 1]])}, "", 422, "invalid_labels"),
    ("huge ids", {"json": _json_pair([[2**70]], [[1]])}, "", 422, "invalid_labels"),
    ("empty map", {"json": _json_pair([[]], [[]])}, "", 422, "empty"),
    ("no images", {"json": {"images": []}}, "", 422, "invalid_request"),
    ("missing pred", {"json": {"images": [{"gt": {"instances": [[1]]}}]}}, "", 422, "missing_field"),
    ("nan in json", {"content": b'{"images": [{"gt": {"instances": [[NaN]]}, "pred": {"instances": [[1]]}}]}',
                     "headers": {"content-type": "application/json"}}, "", 422, "invalid_request"),
    ("broken json", {"content": b'{"images": [', "headers": {"content-type": "application/json"}}, "", 422,
     "invalid_request"),
    ("both radius and magnification", {"json": _json_pair([[1]], [[1]])}, "?radius=5&magnification=40", 422,
     "conflicting_parameters"),
    ("bad magnification", {"json": _json_pair([[1]], [[1]])}, "?magnification=30", 422, "invalid_request"),
    ("class id beyond K", {"json": {"images": [{"gt": {"instances": [[1]], "classes": [[5]]},
                                                "pred": {"instances": [[1]], "classes": [[5]]}}]}}, "?classes=2", 422,
     "invalid_labels"),
    ("wrong content type", {"content": b"gt=1", "headers": {"content-type": "text/plain"}}, "", 415,
     "unsupported_media_type"),
    ("nan in npy", {"files": [("gt", ("a.npy", npy_bytes(np.full((4, 4), np.nan)), "x")),
                              ("pred", ("a.npy", npy_bytes(np.zeros((4, 4))), "x"))]}, "", 422, "nan_values"),
    ("npy shapes differ", {"files": [("gt", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x")),
                                     ("pred", ("a.npy", npy_bytes(np.zeros((4, 5), np.int32)), "x"))]}, "", 422,
     "shape_mismatch"),
    ("png instead of npy", {"files": [("gt", ("a.png", b"\x89PNG\r\n\x1a\nxxxx", "x")),
                                      ("pred", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x"))]}, "", 415,
     "not_an_array"),
    ("missing pred file", {"files": [("gt", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x"))]}, "", 422,
     "missing_field"),
    ("counts differ", {"files": [("gt", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x")),
                                 ("gt", ("b.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x")),
                                 ("pred", ("c.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x"))]}, "", 422,
     "invalid_labels"),
    ("bad class names", {"files": [("gt", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x")),
                                   ("pred", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x")),
                                   ("class_names", (None, "{not json"))]}, "", 422, "invalid_class_names"),
]


def test_deeply_nested_class_names_are_a_422_not_a_500(client):
    files = [("gt", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x")),
             ("pred", ("a.npy", npy_bytes(np.zeros((4, 4), np.int32)), "x")),
             ("class_names", (None, "[" * 100_000))]
    answer = client.post("/v1/evaluate", files=files)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"] == "invalid_class_names" and answer.json()["detail"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("name, request_kwargs, query, status, code", BAD, ids=[b[0] for b in BAD])
def test_bad_evaluate_requests_are_4xx_naming_the_problem(client, name, request_kwargs, query, status, code):
    answer = client.post("/v1/evaluate" + query, **request_kwargs)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == code and answer.json()["detail"]
    assert client.get("/healthz").status_code == 200
