"""The exported cascade behind HTTP: a Ray Serve deployment with dynamic request batching.

Routes (``route_prefix`` ``/``):
- ``POST /predict``: one image's bytes as the body (``image/*`` or
  ``application/octet-stream``) -> ``{"probability", "melanoma", "threshold", "model"}``;
  ``?mask=true`` adds ``mask_png``, the lesion mask as a base64 PNG at the image's size.
- ``POST /predict/batch``: ``{"images": ["<base64>", ...]}`` (``application/json``) ->
  ``{"predictions": [...]}`` in the same order.
- ``GET /healthz``: ``{"status": "ok", ...}``; ``GET /model-card``: the model card.

Requests from all clients meet in ``@serve.batch``: up to ``max_batch_size`` images, or
what arrived within ``batch_wait_s``, go through ONNX Runtime as one batch, in a worker
thread so that health checks answer while a batch runs. A bad request gets a 4xx answer
with a message (``melanoma.service``) and never reaches the model.

Beside Serve's own metrics, each replica exports (Prometheus, through Ray's metrics
agent, which puts ``ray_`` before every name): ``ray_melanoma_images_total`` (images
scored), ``ray_melanoma_batch_images`` (images per model call), ``ray_melanoma_model_ms``
(ONNX Runtime time per call) and ``ray_melanoma_refused_total`` (the replica's own 4xx and
503 answers, by ``status``; a full queue's 503 comes from Serve's proxy instead). Ray's
histogram ``_sum`` is an approximation (each observation counted at its bucket's
midpoint), so exact totals are counters: ``ray_melanoma_model_time_ms_total``,
``ray_melanoma_requests_total`` and ``ray_melanoma_request_time_ms_total`` (prediction
requests answered 200, and their time inside the replica; refusals are counted apart).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from melanoma.service import (
    IMAGE_TYPES,
    BadRequest,
    CascadeModel,
    Limits,
    check_content_type,
    decode_upload,
    parse_many,
    public_card,
)

ROUTES = ("POST /predict", "POST /predict/batch", "GET /healthz", "GET /model-card")
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64]
MS_BOUNDS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]
CODEC_THREADS = 2  # per replica: decoding, JSON parsing and mask PNGs, off the event loop
BODY_TIMEOUT_S = 60.0  # a many-image body slower than this frees its slot (408)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {declared} bytes, over this route's limit of {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BadRequest(413, f"the body is over this route's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment
class CascadeService:
    def __init__(
        self,
        model_dir: str,
        int8: bool = False,
        limits: Limits | None = None,
        max_batch_size: int = 16,
        batch_wait_s: float = 0.0,
        threads: int | None = None,
        batch_slots: int = 1,
    ):
        # ONNX Runtime on the CPUs the replica reserved: on every core it would compete
        # with Serve's HTTP proxy and router, which every request also goes through.
        self.model = CascadeModel(Path(model_dir), int8=int8, threads=threads)
        self.limits = limits or Limits()
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        # Decoding, parsing and mask encoding run here, never on the event loop: a large
        # decode would stall the batch timer and /healthz.
        self.codec = ThreadPoolExecutor(max_workers=CODEC_THREADS, thread_name_prefix="codec")
        self.card = public_card(self.model.card)
        # Many-image bodies (up to Limits.max_batch_body each) read at once: a request
        # beyond these slots is answered 503 at once instead of buffered.
        self.batch_slots = asyncio.Semaphore(batch_slots)
        self.served = 0
        self.metrics = _metrics()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, uploads: list) -> list:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        results = await loop.run_in_executor(self.executor, self.model.run, uploads)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        self.metrics["model_ms"].observe(elapsed_ms)
        self.metrics["model_time"].inc(elapsed_ms)
        self.metrics["batch"].observe(len(uploads))
        self.metrics["images"].inc(len(uploads))
        self.served += len(uploads)
        return results

    async def __call__(self, request: Request) -> JSONResponse:
        route = f"{request.method} {request.url.path.rstrip('/') or '/'}"
        started = time.perf_counter()
        try:
            answer = await self._route(route, request)
        except BadRequest as err:
            self.metrics["refused"].inc(tags={"status": str(err.status)})
            headers = {"Retry-After": "1"} if err.status == 503 else None
            answer = JSONResponse({"error": err.message}, status_code=err.status, headers=headers)
        # Answered predictions only: a refusal is counted under refused, and its few
        # milliseconds would pull the mean time per answered request down.
        if route.startswith("POST /predict") and answer.status_code == 200:
            self.metrics["requests"].inc()
            self.metrics["request_time"].inc(1000 * (time.perf_counter() - started))
        return answer

    async def _route(self, route: str, request: Request) -> JSONResponse:
        if route == "GET /healthz":
            return JSONResponse(self._health())
        if route == "GET /model-card":
            return JSONResponse(self.card)
        if route == "POST /predict":
            return JSONResponse(await self._predict_one(request))
        if route == "POST /predict/batch":
            return JSONResponse(await self._predict_many(request))
        raise BadRequest(404, f"no route {route}; this service has {', '.join(ROUTES)}")

    def _health(self) -> dict:
        return {
            "status": "ok",
            "model": self.model.kind,
            "input_size": self.model.size,
            "threshold": self.model.threshold,
            "images_served": self.served,
        }

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.codec, fn, *args)

    async def _predict_one(self, request: Request) -> dict:
        check_content_type(request.headers.get("content-type"), IMAGE_TYPES)
        body = await _body(request, self.limits.max_image_bytes)
        upload = await self._off_loop(decode_upload, body, self.model.size, self.limits)
        prob, mask = await self.predict_batch(upload)
        return await self._off_loop(self.model.answer, upload, prob, mask, _flag(request, "mask"))

    async def _predict_many(self, request: Request) -> dict:
        check_content_type(request.headers.get("content-type"), ("application/json",))
        if self.batch_slots.locked():
            raise BadRequest(
                503, "this replica is reading as many image batches as it may; retry shortly"
            )
        async with self.batch_slots:
            try:  # a client that uploads slowly must not hold the slot forever
                body = await asyncio.wait_for(
                    _body(request, self.limits.max_batch_body), BODY_TIMEOUT_S
                )
            except TimeoutError:
                raise BadRequest(
                    408, f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s; send it again"
                ) from None
            return await self._answer_many(request, body)

    async def _answer_many(self, request: Request, body: bytes) -> dict:
        uploads = await self._off_loop(parse_many, body, self.model.size, self.limits)
        results = await asyncio.gather(*(self.predict_batch(u) for u in uploads))
        with_mask = _flag(request, "mask")

        def answers():
            return [
                self.model.answer(u, p, m, with_mask)
                for u, (p, m) in zip(uploads, results, strict=True)
            ]

        return {"predictions": await self._off_loop(answers)}


def _metrics() -> dict:
    """The replica's own Prometheus metrics (exported by Ray's metrics agent)."""
    from ray.serve.metrics import Counter, Histogram

    return {
        "images": Counter("melanoma_images", description="Images scored by the model."),
        "batch": Histogram(
            "melanoma_batch_images",
            description="Images per model call (dynamic batching).",
            boundaries=BATCH_BOUNDS,
        ),
        "model_ms": Histogram(
            "melanoma_model_ms",
            description="ONNX Runtime time per model call, in ms.",
            boundaries=MS_BOUNDS,
        ),
        "refused": Counter(
            "melanoma_refused",
            description="Requests answered 4xx or 503, by status.",
            tag_keys=("status",),
        ),
        # Exact totals (Ray's histogram sums are bucket-midpoint approximations).
        "model_time": Counter("melanoma_model_time_ms", description="ONNX Runtime ms, summed."),
        "requests": Counter("melanoma_requests", description="Prediction requests answered."),
        "request_time": Counter(
            "melanoma_request_time_ms", description="Ms in the replica per prediction, summed."
        ),
    }


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Backpressure:
    """How much a replica holds before it answers 503 (Serve's ``max_ongoing_requests``
    and ``max_queued_requests``, and the many-image bodies read at once)."""

    max_ongoing: int = 32
    max_queued: int = 64
    batch_slots: int = 1

    def __post_init__(self) -> None:
        if min(self.max_ongoing, self.max_queued, self.batch_slots) < 1:
            raise ValueError(
                f"need max_ongoing, max_queued and batch_slots >= 1, got {self.max_ongoing}, "
                f"{self.max_queued} and {self.batch_slots}"
            )

    def memory_bound(self, limits: Limits) -> int:
        """The request bytes one replica may hold at once: its single-image requests at
        their largest, its many-image bodies and their base64-decoded copies, and the
        images its codec threads decode at their largest (RGB)."""
        bodies = self.max_ongoing * limits.max_image_bytes
        bodies += self.batch_slots * 2 * limits.max_batch_body
        return bodies + CODEC_THREADS * limits.max_pixels * 3


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a metrics agent or a test)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replicas_for(cpus: float, replica_cpus: float) -> int:
    """One replica per CPU the Ray node offers (each reserving ``replica_cpus``)."""
    return max(1, int(cpus // replica_cpus))


def check_settings(num_replicas, replica_cpus, max_batch_size, batch_wait_ms, drain_s=20.0) -> None:
    """Settings no replica could run, refused before Ray starts."""
    replicas_ok = num_replicas is None or num_replicas >= 1
    if max_batch_size < 1 or batch_wait_ms < 0 or not replicas_ok or replica_cpus <= 0:
        raise ValueError(
            f"need max_batch_size >= 1, batch_wait_ms >= 0, num_replicas >= 1 and "
            f"replica_cpus > 0, got {max_batch_size}, {batch_wait_ms}, {num_replicas} and "
            f"{replica_cpus}"
        )
    if drain_s < 0:
        raise ValueError(f"need drain_s >= 0 (seconds to finish requests), got {drain_s}")


def model_info(model_dir: Path, int8: bool = False) -> dict:
    """What /healthz says of the model (serving.health)."""
    model = CascadeModel(Path(model_dir), int8=int8)
    return {"model": model.kind, "input_size": model.size, "threshold": model.threshold}


def build_app(
    model_dir: Path,
    *,
    int8: bool = False,
    num_replicas: int = 1,
    replica_cpus: float = 1.0,
    max_batch_size: int = 16,
    batch_wait_ms: float = 0.0,
    limits: Limits | None = None,
    backpressure: Backpressure | None = None,
    drain_s: float = 20.0,
):
    """The Serve application over an exported cascade directory. The model is opened here
    first, so a wrong directory or a missing INT8 model fails before any replica starts.
    A replica asked to stop finishes its requests in flight for up to ``drain_s``."""
    CascadeModel(Path(model_dir), int8=int8)
    check_settings(num_replicas, replica_cpus, max_batch_size, batch_wait_ms, drain_s)
    bp = backpressure or Backpressure()
    from ray.serve.config import BackpressureConfig

    return CascadeService.options(
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=bp.max_ongoing,
        max_queued_requests=bp.max_queued,
        # Serve sends no Retry-After of its own on a full queue.
        backpressure_config=BackpressureConfig(retry_after_s=1),
        graceful_shutdown_timeout_s=drain_s,
        graceful_shutdown_wait_loop_s=0.5,
    ).bind(
        str(Path(model_dir).resolve()),
        int8,
        limits or Limits(),
        max_batch_size,
        batch_wait_ms / 1000.0,
        max(1, int(replica_cpus)),
        bp.batch_slots,
    )
