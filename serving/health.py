"""``GET /healthz`` outside the model's queue: a deployment of its own, in an application
of its own at ``/healthz``, so that a full queue (503 for everything else) or a busy
replica never delays the answer. It asks Serve's controller how the model's replicas
stand, at most once a second, and answers 200 while at least one runs, else 503.

Measured under a storm of 640 connections on 2 cores (docs/results.md): through the
model's own deployment, /healthz was answered 503 151 times out of 152."""

from __future__ import annotations

import asyncio
import time

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

HEALTH_APP_SUFFIX = "-health"
STATUS_TTL_S = 1.0  # the controller is asked at most this often
CONTROLLER_TIMEOUT_S = 5.0  # a controller slower than this: 503


# No CPU of its own: every CPU goes to the model's replicas (one per CPU by default).
@serve.deployment(
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
    max_queued_requests=-1,
)
class Health:
    def __init__(self, app: str, model: dict) -> None:
        self.app, self.model = app, model
        self.checked_at, self.replicas, self.app_status = 0.0, {}, "UNKNOWN"
        self.lock = asyncio.Lock()

    async def __call__(self, request: Request) -> JSONResponse:
        await self._refresh()
        running = self.replicas.get("RUNNING", 0)
        body = {
            "status": "ok" if running else "unavailable",
            **self.model,
            "application": self.app_status,
            "replicas": self.replicas,
        }
        return JSONResponse(body, status_code=200 if running else 503)

    async def _refresh(self) -> None:
        async with self.lock:  # one controller call at a time, however many checks wait
            if time.monotonic() - self.checked_at < STATUS_TTL_S:
                return
            try:
                self.app_status, self.replicas = await asyncio.wait_for(
                    asyncio.to_thread(replica_states, self.app), CONTROLLER_TIMEOUT_S
                )
            except Exception as err:  # noqa: BLE001 (any failure to ask is an answer: 503)
                # The kind only: this endpoint is unauthenticated.
                self.app_status, self.replicas = f"UNKNOWN ({type(err).__name__})", {}
            # Advanced even when the controller failed: under load it is asked no more often.
            self.checked_at = time.monotonic()


def replica_states(app: str) -> tuple[str, dict[str, int]]:
    """The application's status and its model replicas' count by state, from Serve."""
    status = serve.status().applications.get(app)
    if status is None:
        return "NOT_STARTED", {}
    counts: dict[str, int] = {}
    for deployment in status.deployments.values():
        for state, n in deployment.replica_states.items():
            key = getattr(state, "value", str(state))
            counts[key] = counts.get(key, 0) + n
    return getattr(status.status, "value", str(status.status)), counts


def run_with_health(app, name: str, model: dict, route_prefix: str = "/") -> None:
    """``serve.run`` the model's application as ``name``, then its health application
    at ``{route_prefix}healthz`` (Serve routes the longer prefix there)."""
    serve.run(app, name=name, route_prefix=route_prefix)
    serve.run(
        Health.bind(name, model),
        name=name + HEALTH_APP_SUFFIX,
        route_prefix=route_prefix.rstrip("/") + "/healthz",
    )
