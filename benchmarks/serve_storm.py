"""The service under a hostile storm: a flood of ten times its queue in concurrent
connections, beside oversized bodies, a decompression bomb, truncated and unreadable
images and too-large batches; what it answered, how fast `/healthz` answered throughout,
each replica's resident memory against the documented bound, and whether the good
requests after the storm get the answers they got before it.

    python benchmarks/serve_storm.py --model EXPORT_DIR --images DIR [--seconds 30]
        [--flood N] [--replicas N] [--batch-wait-ms 0] [--ingress auto|proxy|haproxy]
        [--no-health-app] [--json out.json]

The flood is `wrk` (``apt-get install wrk``) posting one good image per request from
``--flood`` connections (default ten times Serve's queue limit, ``max_queued``) for
``--seconds``; four threads of ours post the hostile requests in turn meanwhile, one
client polls ``/healthz`` every 50 ms, and each replica's VmRSS is read from /proc every
0.25 s. The service runs with `melanoma serve`'s defaults unless told otherwise. Loopback
only; stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

# wrk's Lua: every thread counts its answers by status; done() adds them up.
WRK_COUNTS = """wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local f = io.open("{path}", "rb")
wrk.body = f:read("*all")
f:close()
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {{}} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {{}}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %d %d\\n", k, v)) end
  io.write(string.format("socket errors %d %d %d %d\\n", summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout))
end
"""


def hostile_requests(good: bytes, max_images: int) -> dict[str, tuple[str, str, bytes]]:
    """Each hostile kind: (route, content type, body)."""
    from PIL import Image

    bomb = io.BytesIO()  # 13000 x 13000 claimed in 1 bit: 0.5 GB once decoded to RGB
    Image.new("1", (13000, 13000)).save(bomb, "PNG")
    many = json.dumps({"images": [base64.b64encode(good).decode()] * (max_images + 1)})
    return {
        "oversized": ("/predict", "image/jpeg", b"\xff\xd8" + bytes(21 * 2**20)),
        "bomb": ("/predict", "image/png", bomb.getvalue()),
        "truncated": ("/predict", "image/jpeg", good[: len(good) // 2]),
        "garbage": ("/predict", "image/jpeg", b"this is not an image"),
        "too many images": ("/predict/batch", "application/json", many.encode()),
    }


def post(url: str, body: bytes, content_type: str, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def replica_rss_mb(deployment: bytes = b"CascadeService") -> dict[int, float]:
    """VmRSS of every Serve replica of ``deployment`` (the model's: not the health
    replica's) on this machine, by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"ServeReplica" not in cmdline or deployment not in cmdline:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[int(entry.name)] = int(line.split()[1]) / 1024
        except OSError:  # gone meanwhile
            continue
    return out


def parse_counts(text: str) -> dict:
    statuses, errors = Counter(), 0
    for line in text.splitlines():
        words = line.split()
        if line.startswith("status ") and len(words) == 3:
            statuses[int(words[1])] += int(words[2])
        elif line.startswith("socket errors "):
            errors = sum(int(w) for w in words[2:])
    return {"statuses": dict(statuses), "socket_errors": errors}


def flood(url: str, image: Path, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_COUNTS.format(path=str(image.resolve()).replace('"', '\\"')))
    try:
        done = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
            + ["-s", fh.name, f"{url}/predict"],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        Path(fh.name).unlink()
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse_counts(done.stdout)


class Watch:
    """Health polls, replica memory samples and hostile requests, each in a thread,
    until ``stop``."""

    def __init__(self, url: str, hostile: dict) -> None:
        self.url, self.hostile = url, hostile
        self.stop = threading.Event()
        self.health: list[tuple[int, float]] = []
        self.memory: dict[int, float] = {}
        self.answers: dict[str, Counter] = {k: Counter() for k in hostile}
        workers = [self._poll_health, self._sample_memory] + [self._attack] * 4
        self.threads = [threading.Thread(target=w, daemon=True) for w in workers]

    def __enter__(self) -> Watch:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def _poll_health(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=10) as r:
                    status = r.status
            except urllib.error.HTTPError as err:
                status = err.code
            except (urllib.error.URLError, OSError):
                status = 0
            self.health.append((status, 1000 * (time.perf_counter() - started)))
            self.stop.wait(0.05)

    def _sample_memory(self) -> None:
        while not self.stop.is_set():
            for pid, mb in replica_rss_mb().items():
                self.memory[pid] = max(self.memory.get(pid, 0.0), mb)
            self.stop.wait(0.25)

    def _attack(self) -> None:
        kinds = list(self.hostile)
        i = 0
        while not self.stop.is_set():
            kind = kinds[i % len(kinds)]
            route, content_type, body = self.hostile[kind]
            status, _ = post(self.url + route, body, content_type)
            self.answers[kind][status] += 1
            i += 1


def probabilities(url: str, bodies: list[bytes]) -> list[float | None]:
    out = []
    for body in bodies:
        status, text = post(f"{url}/predict", body, "image/jpeg")
        out.append(json.loads(text)["probability"] if status == 200 else None)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a `melanoma export` directory")
    p.add_argument("--images", type=Path, required=True, help="a folder of image files")
    p.add_argument("--seconds", type=float, default=30.0, help="the storm's length")
    p.add_argument("--flood", type=int, help="wrk's connections (default: 10 x max_queued)")
    p.add_argument("--replicas", type=int, help="default: one per CPU, as `melanoma serve`")
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--ingress", choices=["auto", "proxy", "haproxy"], default="auto")
    p.add_argument(
        "--no-health-app",
        action="store_true",
        help="answer /healthz in the model's deployment, as before serving.health",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        p.error("the flood needs wrk: apt-get install wrk")
    if not 1 <= args.seconds <= 600 or (args.flood is not None and args.flood < 1):
        p.error(f"need 1 <= --seconds <= 600 and --flood >= 1, got {args.seconds}, {args.flood}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from melanoma.data.io import IMAGE_EXTENSIONS
    from melanoma.service import Limits
    from serving.app import Backpressure, build_app, free_port, model_info, replicas_for
    from serving.health import run_with_health
    from serving.ingress import choose_ingress, set_ingress

    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"no images in {args.images}")
    good = [f.read_bytes() for f in files[:16]]
    limits, bp = Limits(), Backpressure()
    connections = args.flood or 10 * bp.max_queued
    hostile = hostile_requests(good[0], limits.max_images)
    ingress = choose_ingress(args.ingress, on_cluster=False)
    set_ingress(ingress)

    import ray
    from ray import serve

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        replicas = args.replicas or replicas_for(ray.available_resources().get("CPU", 1), 1.0)
        app = build_app(args.model, num_replicas=replicas, batch_wait_ms=args.batch_wait_ms)
        if args.no_health_app:  # /healthz through the model's own deployment and queue
            serve.run(app, name="storm", route_prefix="/")
        else:
            run_with_health(app, "storm", model_info(args.model))
        before = probabilities(url, good)
        idle = replica_rss_mb()
        started = time.perf_counter()
        with Watch(url, hostile) as watch:
            flooded = flood(url, files[0], connections, args.seconds)
        storm_s = time.perf_counter() - started
        after = probabilities(url, good)
    finally:
        serve.shutdown()
        ray.shutdown()
    result = {
        "replicas": replicas,
        "ingress": ingress,
        "health_app": not args.no_health_app,
        "connections": connections,
        "storm_s": storm_s,
        "flood": flooded,
        "hostile": {k: dict(v) for k, v in watch.answers.items()},
        "health": summarise_health(watch.health),
        "memory": {
            "replicas": {
                str(pid): {"idle_mb": idle.get(pid), "peak_mb": peak}
                for pid, peak in sorted(watch.memory.items())
            },
            "request_bound_mb": bp.memory_bound(limits) / 2**20,
        },
        "after": {
            "answered": sum(a is not None for a in after),
            "equal": sum(
                a is not None and b is not None and abs(a - b) <= 1e-6
                for a, b in zip(after, before, strict=True)
            ),
            "requests": len(good),
        },
        "settings": vars(args) | {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
    }
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


def summarise_health(health: list[tuple[int, float]]) -> dict:
    times = sorted(ms for _, ms in health)
    return {
        "checks": len(health),
        "ok": sum(s == 200 for s, _ in health),
        "statuses": dict(Counter(s for s, _ in health)),
        "over_100_ms": sum(ms > 100 for ms in times),
        "p50_ms": times[len(times) // 2] if times else float("nan"),
        "max_ms": times[-1] if times else float("nan"),
    }


def print_report(r: dict) -> None:
    f, h, m, a = r["flood"], r["health"], r["memory"], r["after"]
    print(
        f"\nstorm of {r['storm_s']:.0f} s on {r['replicas']} replica(s) behind {r['ingress']}"
        f"{'' if r['health_app'] else ', /healthz in the model deployment'}: wrk with "
        f"{r['connections']} connections, answers by status {f['statuses']}, "
        f"{f['socket_errors']} socket errors"
    )
    for kind, statuses in r["hostile"].items():
        print(f"  {kind:16} answered {statuses}")
    print(
        f"/healthz: {h['ok']} of {h['checks']} answered 200 ({h['statuses']}); p50 "
        f"{h['p50_ms']:.0f} ms, slowest {h['max_ms']:.0f} ms, {h['over_100_ms']} over 100 ms"
    )
    each = [
        f"{r['peak_mb']:.0f} (idle {r['idle_mb']:.0f}, +{r['peak_mb'] - r['idle_mb']:.0f})"
        if r["idle_mb"] is not None
        else f"{r['peak_mb']:.0f} (started during the storm)"
        for r in m["replicas"].values()
    ]
    print(
        f"model replicas' peak memory (MB): {', '.join(each)}; documented request bound "
        f"{m['request_bound_mb']:.0f} MB per replica above idle"
    )
    print(
        f"after the storm: {a['answered']} of {a['requests']} good requests answered, "
        f"{a['equal']} with the probability they had before it"
    )


if __name__ == "__main__":
    sys.exit(main())
