"""The Serve application over real HTTP on loopback: every format, every error code, dynamic batching, a
bounded load test checked against the in-process predictor, and recovery after a model replica is killed."""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from lungdr.scale.serve import set_serve_env
from lungdr.testing.http_load import CONTENT_TYPES, Client, run_load

TOKEN_ENV = "LUNGDR_TEST_SERVE_TOKEN"
# Ray workers inherit the environment of the process that starts Ray (the session fixture, after collection).
os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(24))
TOKEN = os.environ[TOKEN_ENV]
set_serve_env()  # the request path `lungdr serve` runs (gRPC handles etc.), in the session's Ray too
APP = "lungdr-test"
PHI = ("Doe^Jane", "PID-7731-XYZ", "19700101")
RESULT_KEYS = {"label", "p_abnormal", "votes", "probabilities", "needs_review", "review_reason",
               "lung_area_fraction", "model_version", "mask"}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir):
    return str(tiny_bundle_dir)


@pytest.fixture(scope="module")
def predictor(bundle):
    from lungdr.predictor import Predictor

    return Predictor.from_bundle(bundle)


@pytest.fixture(scope="module")
def uploads(sample_dir) -> list[tuple[bytes, str]]:
    """Six real sample radiographs, two each as PNG, JPEG and DICOM (the DICOMs carry patient identifiers)."""
    from lungdr.testing.dicom import make_dicom

    out = []
    for i, path in enumerate(sorted((sample_dir / "images").glob("*.png"))[:6]):
        fmt = ("png", "jpeg", "dicom")[i % 3]
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if fmt == "png":
            data = path.read_bytes()
        elif fmt == "jpeg":
            data = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        else:
            data = make_dicom(gray, Modality="DX", PatientName=PHI[0], PatientID=PHI[1], PatientBirthDate=PHI[2])
        out.append((data, CONTENT_TYPES[fmt]))
    return out


@pytest.fixture(scope="module")
def expected(predictor, uploads) -> list[dict]:
    return [predictor.predict_bytes(data, "upload", return_mask=True) for data, _ in uploads]


@pytest.fixture(scope="module")
def server(ray_session, bundle):
    from ray import serve

    from lungdr.scale.serve import start
    from lungdr.testing.cluster import free_port

    url = start({"bundle_uri": bundle, "token_env": TOKEN_ENV, "max_upload_mb": 0.5, "max_batch_size": 8,
                 "batch_wait_timeout_s": 0.05, "model_retry_s": 30}, host="127.0.0.1", port=free_port(), name=APP)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, TOKEN)


def _same(answer: dict, want: dict) -> None:
    assert abs(answer["p_abnormal"] - float(want["p_abnormal"])) < 1e-5
    assert answer["label"] == want["label"] and answer["needs_review"] == want["needs_review"]
    assert answer["votes"] == {k: (None if v is None else int(v)) for k, v in want["votes"].items()}


def test_each_format_matches_in_process_predictor_and_leaks_no_phi(client, uploads, expected):
    for (data, ctype), want in zip(uploads, expected):
        r = client.session.post(f"{client.url}/v1/predict", data=data,
                                headers={**client.headers, "Content-Type": ctype})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == RESULT_KEYS and body["mask"] is None
        _same(body, want)
        assert not any(s in r.text for s in PHI)


def test_multipart_upload_with_mask_at_input_size(client, uploads, expected):
    for (data, ctype), want in list(zip(uploads, expected))[:3]:
        status, body = client.predict(data, ctype, mask=True, multipart=True)
        assert status == 200, body
        _same(body, want)
        png = np.frombuffer(base64.b64decode(body["mask"]), np.uint8)
        mask = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
        assert mask.shape == want["mask"].shape and set(np.unique(mask)) <= {0, 255}
        assert np.mean((mask > 0) == (want["mask"] > 0)) > 0.99


def _wrong(token: str) -> str:
    """The token with its last character changed (always a different token)."""
    return token[:-1] + ("y" if token.endswith("x") else "x")


def _multiframe_dicom() -> bytes:
    from lungdr.testing.dicom import make_dicom

    return make_dicom(np.zeros((3, 32, 32), np.uint8))


def _dicom_without_pixels() -> bytes:
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientName = "SR", PHI[0]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_every_error_has_its_code_and_json_shape(server, client, uploads):
    png = uploads[0][0]
    auth = client.headers
    url = f"{server}/v1/predict"
    cases = [
        (401, "unauthorized", dict(data=png)),
        (401, "unauthorized", dict(data=png, headers={"Authorization": "Bearer " + _wrong(TOKEN)})),
        (400, "bad_request", dict(files={"image": ("x.png", png, "image/png")}, headers=auth)),
        (400, "bad_request", dict(params={"mask": "perhaps"}, data=png, headers=auth)),
        (413, "too_large", dict(data=png + b"\0" * 600_000, headers=auth)),  # Content-Length says too much
        (413, "too_large", dict(data=iter([b"\0" * 200_000] * 4), headers=auth)),  # chunked: counted as it arrives
        (415, "unsupported_format", dict(data=b"patient notes, not an image", headers=auth)),
        (415, "unsupported_format", dict(data=b"\x93NUMPY" + b"\0" * 200, headers=auth)),
        (422, "undecodable", dict(data=png[: len(png) // 2], headers=auth)),
        (422, "empty_file", dict(data=b"", headers=auth)),
        (422, "multiframe_dicom", dict(data=_multiframe_dicom(), headers=auth)),
        (422, "no_pixel_data", dict(data=_dicom_without_pixels(), headers=auth)),
    ]
    for status, code, kwargs in cases:
        r = requests.post(url, timeout=60, **kwargs)
        assert r.status_code == status, (code, r.text)
        assert r.json()["error"] == code and r.json()["message"], r.text
        assert PHI[0] not in r.text
    assert requests.post(url, data=png, headers=auth, timeout=60).status_code == 200  # still serving


def test_health_model_card_and_docs(server, client, predictor):
    assert requests.get(f"{server}/v1/health", timeout=30).json()["status"] == "ok"  # probes need no token
    assert requests.get(f"{server}/v1/model", timeout=30).status_code == 401
    card = client.session.get(f"{server}/v1/model", headers=client.headers, timeout=30).json()
    assert card["model_version"] == predictor.model_version
    assert card["manifest"]["model_version"] == predictor.model_version and "metrics" in card["manifest"]
    assert requests.get(f"{server}/docs", timeout=30).status_code == 200
    assert "/v1/predict" in requests.get(f"{server}/openapi.json", timeout=30).json()["paths"]


def _stats(name: str) -> dict:
    from lungdr.scale.serve import driver_handle

    return driver_handle(name, APP).stats.remote().result(timeout_s=60)


def test_bounded_load_batches_and_matches_predictor(client, uploads, expected):
    """16 clients, bad uploads mixed in: every good one matches the in-process predictor, every bad one gets its
    own 422 (a bad upload never fails the rest of its batch), and every batched stage saw batches > 1."""
    bad = (uploads[0][0][: len(uploads[0][0]) // 2], "image/png")
    payloads = [bad if i % 25 == 7 else uploads[i % len(uploads)] for i in range(300)]
    answers = run_load(client, payloads, clients=16)
    for a in answers:
        if payloads[a.index] is bad:
            assert a.status == 422 and a.body["error"] == "undecodable", a.body
        else:
            assert a.status == 200, a.body
            _same(a.body, expected[a.index % len(uploads)])
    for name in ("LungdrIngress", "SegmenterDeployment", "SVMDeployment", "TransferDeployment",
                 "CNN3DDeployment"):
        stats = _stats(name)
        assert stats["items"] >= len(payloads) - 12 and stats["max_batch_size_seen"] > 1, (name, stats)
        steps = {"prepare", "segmenter_call", "classifier_calls", "finish"} if name == "LungdrIngress" else {"compute"}
        assert set(stats["step_ms"]) == steps and all(v > 0 for v in stats["step_ms"].values()), (name, stats)


def test_model_deployment_merges_concurrent_calls(server, predictor):
    """Stacked calls arriving together run as one forward (counted in images) and each gets its own slice back."""
    from lungdr.scale.serve import driver_handle

    handle = driver_handle("SegmenterDeployment", APP)
    rng = np.random.default_rng(0)
    n = predictor.preprocess_cfg.size
    batches = [rng.random((k, n, n), dtype=np.float32) for k in (1, 2, 3, 1, 1)]
    before = _stats("SegmenterDeployment")
    responses = [handle.remote(x) for x in batches]
    for x, r in zip(batches, responses):
        np.testing.assert_array_equal(r.result(timeout_s=60), predictor.segment(x))
    after = _stats("SegmenterDeployment")
    calls, runs = after["calls"] - before["calls"], after["batches"] - before["batches"]
    assert after["items"] - before["items"] == 8 and calls == 5 and runs < calls, (before, after)


def test_adaptive_wait_grows_only_while_a_batch_runs():
    from lungdr.scale.serve_stages import AdaptiveWait

    wait = AdaptiveWait(base_s=0.001)
    assert wait.next_wait() == 0.001  # idle, nothing learnt yet
    token = wait.started()
    time.sleep(0.2)
    wait.finished(token)
    assert wait.next_wait() == 0.001 and 0.19 < wait.mean_s < 2.0  # idle again: a lone request does not wait
    token = wait.started()
    assert 0.05 < wait.next_wait() <= wait.mean_s  # busy: wait until the running batch should end (a stalled
    # machine may take a while between the two calls, hence the wide margin)
    time.sleep(wait.mean_s + 0.01)
    assert wait.next_wait() == 0.001  # overdue: no longer than the base
    wait.finished(token)


def _replicas(name: str = "", app: str = APP) -> list[str]:
    """Names of the live replica actors of deployment ``name`` (every deployment when empty) of ``app``. Serve names
    them ``SERVE_REPLICA::<app>#<deployment>#<id>`` in the ``serve`` namespace; this asks the GCS directly (the state
    API would need the dashboard, off in tests)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{name + '#' if name else ''}"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(prefix))


def test_killed_model_replica_is_replaced_without_losing_requests(client, uploads, expected):
    import ray

    (victim,) = _replicas("SVMDeployment")
    payloads = [uploads[i % len(uploads)] for i in range(48)]
    done: list = []
    loader = threading.Thread(target=lambda: done.extend(run_load(client, payloads, clients=8)))
    loader.start()
    time.sleep(1.0)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    loader.join(timeout=300)
    assert not loader.is_alive() and len(done) == len(payloads)
    assert all(a.status == 200 for a in done), sorted({a.status for a in done})  # the ingress retried them
    for a in done:
        _same(a.body, expected[a.index % len(uploads)])
    deadline = time.monotonic() + 60
    while not [r for r in _replicas("SVMDeployment") if r != victim]:
        assert time.monotonic() < deadline, "Serve did not replace the killed replica"
        time.sleep(0.5)
    after = run_load(client, payloads[:12], clients=4)
    assert [a.status for a in after] == [200] * 12


def test_single_topology_runs_the_models_inside_the_ingress(server, bundle, uploads, expected):
    """``topology: single``: one ingress deployment and no model deployments; the same answers as the in-process
    predictor, and its requests still batch (stacked model calls inside the replica)."""
    from ray import serve

    from lungdr.scale.serve import driver_handle, start

    app, port = f"{APP}-single", int(server.rsplit(":", 1)[1])
    url = start({"bundle_uri": bundle, "topology": "single", "batch_wait_timeout_s": 0.05},
                host="127.0.0.1", port=port, name=app, route_prefix="/single")
    try:
        deployments = {replica.split("#")[1] for replica in _replicas(app=app)}
        assert deployments == {"LungdrIngress"}, deployments
        answers = run_load(Client(url), [uploads[i % len(uploads)] for i in range(48)], clients=8)
        assert [a.status for a in answers] == [200] * 48
        for a in answers:
            _same(a.body, expected[a.index % len(uploads)])
        stats = driver_handle("LungdrIngress", app).stats.remote().result(timeout_s=60)
        assert stats["max_batch_size_seen"] > 1 and stats["items"] >= 48, stats
    finally:
        serve.delete(app)


def test_app_settings_from_cli_strings_yaml_and_errors(tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from lungdr.errors import ConfigError
    from lungdr.scale.serve import app_settings, model_options, read_token

    (tmp_path / "c.yaml").write_text("serve:\n  max_batch_size: 4\n  replicas: 2\n")
    uri, cfg = app_settings({"bundle_uri": "s3://b/x", "config": str(tmp_path / "c.yaml"), "max_replicas": "5",
                             "batch_wait_timeout_s": "0.02", "token_env": "None"})
    assert (uri, cfg.max_batch_size, cfg.replicas, cfg.max_replicas, cfg.token_env) == ("s3://b/x", 4, 2, 5, None)
    assert model_options(cfg)["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 5,
                                                        "target_ongoing_requests": cfg.target_ongoing_requests}
    for bad in ({}, {"bundle_uri": "b", "replicaz": 2}, {"bundle_uri": "b", "max_batch_size": "eight"},
                {"bundle_uri": "b", "max_upload_mb": 0}, {"bundle_uri": "b", "topology": "mesh"}):
        with pytest.raises(ConfigError):
            app_settings(bad)
    with pytest.raises(ConfigError):
        read_token("LUNGDR_TEST_UNSET_TOKEN_VARIABLE")
    deploy = yaml.safe_load((Path(__file__).parents[2] / "ray_jobs" / "serve_config.yaml").read_text())
    (app,) = ServeDeploySchema.model_validate(deploy).applications
    assert app.import_path == "lungdr.scale.serve:build_app"
    assert app_settings(app.args)[1].token_env == "LUNGDR_API_TOKEN"


def test_app_urls_point_at_the_proxy_without_direct_ingress(server):
    """Where the app answers HTTP, from Serve's target groups: without direct ingress, the proxy's address."""
    from lungdr.scale.serve import app_urls

    urls = app_urls(APP, "127.0.0.1", timeout_s=10)
    assert urls == [server], urls
    assert requests.get(f"{urls[0]}/v1/health", timeout=30).status_code == 200
