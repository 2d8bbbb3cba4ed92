"""How the data path grows with the data set: ISIC 2020-shaped synthetic sets at several
sizes, each through `data check`, the split, the decoded cache and the first training
batch, with wall time, images per second, peak resident memory and disk, and the growth
exponent of every stage between consecutive sizes (1.0: linear).

    python benchmarks/data_scale.py [--sizes 2000 10000 33126] [--px 1024]
                                    [--per-patient 16] [--cache-size 256]
                                    [--work DIR] [--json out.json]

The sets (ISIC 2020's layout: train.csv with patient_id and target, JPEGs in train/,
1.8% melanoma, several images per patient, every file's bytes distinct; lesions drawn at
up to 1024 px and enlarged beyond) are generated once into --work (default a temp dir)
and kept there; generating counts separately.
Each size is measured in a fresh process, so its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

STAGES = ("check", "split", "prepare", "first_batch")
BASE_IMAGES = 64  # distinct lesion pictures; each file stamps its own index into a corner
MAX_IMAGES = 2**16  # what the stamp can tell apart
BASE_PX = 1024  # lesion pictures are drawn at most this large (drawing 4000 px takes minutes)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 33126])
    p.add_argument("--px", type=int, default=1024, help="the JPEGs' side")
    p.add_argument("--per-patient", type=int, default=16, help="mean images per patient")
    p.add_argument("--cache-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="decoding threads (default: prepare's)")
    p.add_argument("--work", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one size, in a child
    args = p.parse_args(argv)
    rising = all(a < b for a, b in zip(args.sizes, args.sizes[1:], strict=False))
    if any(n < 50 for n in args.sizes) or max(args.sizes) > MAX_IMAGES or not rising:
        p.error(f"--sizes must rise and each be 50 to {MAX_IMAGES} images, got {args.sizes}")
    if not 64 <= args.px <= 6000 or not 16 <= args.cache_size <= args.px:
        p.error(
            f"need 64 <= --px <= 6000 and 16 <= --cache-size <= --px, got {args.px}, "
            f"{args.cache_size}"
        )
    if args.per_patient < 1:
        p.error(f"--per-patient must be at least 1, got {args.per_patient}")
    return args


def generate(root: Path, n: int, px: int, per_patient: int, seed: int = 0) -> float:
    """An ISIC 2020-shaped set of ``n`` images at ``root`` (kept: a finished one is reused);
    the seconds it took."""
    done, key = (
        root / "generated.json",
        {"n": n, "px": px, "per_patient": per_patient, "seed": seed, "stamp": "8x8 blocks"}
        | ({"drawn_at": BASE_PX} if px > BASE_PX else {}),
    )
    if done.is_file() and json.loads(done.read_text()) == key:
        return 0.0
    from melanoma.data.synth import generate_sample

    started = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.0176).astype(int)
    patients = rng.integers(0, max(1, n // per_patient), n)
    drawn = min(px, BASE_PX)
    bases = np.stack(
        [
            _enlarged(generate_sample(rng, drawn, bool(m))[0], px)
            for m in (0, 1)
            for _ in range(BASE_IMAGES // 2)
        ]
    )
    # Encoding is most of the time: every core writes its share of the files.
    chunks = np.array_split(np.arange(n), 8 * (os.cpu_count() or 1))
    with ProcessPoolExecutor(initializer=_keep_bases, initargs=(bases,)) as pool:
        folders, label_lists = [root / "train"] * len(chunks), [labels] * len(chunks)
        list(pool.map(_write_images, folders, chunks, label_lists))
    rows = ["image_name,patient_id,sex,age_approx,anatom_site_general_challenge,target"]
    for i in range(n):
        sex = "male" if i % 2 else "female"
        rows.append(f"ISIC_{i:07d},IP_{patients[i]:07d},{sex},{30 + i % 50},torso,{labels[i]}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    done.write_text(json.dumps(key))
    return time.perf_counter() - started


_BASES: np.ndarray | None = None  # a generating worker's lesion pictures


def _keep_bases(bases: np.ndarray) -> None:
    global _BASES
    _BASES = bases


def _write_images(folder: Path, indices: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    half = BASE_IMAGES // 2
    for i in indices:
        image = _BASES[(i % half) + half * labels[i]].copy()
        image[:32, :32] = _stamp(int(i))
        Image.fromarray(image).save(folder / f"ISIC_{i:07d}.jpg", quality=90)


def _enlarged(image: np.ndarray, px: int) -> np.ndarray:
    import cv2

    if image.shape[0] == px:
        return image
    return cv2.resize(image, (px, px), interpolation=cv2.INTER_CUBIC)


def _stamp(i: int) -> np.ndarray:
    """``i``'s 16 bits as a 4x4 grid of black or white 8x8 blocks, aligned to JPEG's own
    blocks so that compression keeps every file's content distinct (a one-level change
    of a few pixels does not survive quality 90, and the check would link the files as
    duplicates)."""
    bits = (i >> np.arange(16)) & 1
    if i >= 2**16:
        raise ValueError(f"the stamp holds 16 bits; image index {i} needs more")
    blocks = np.kron(bits.reshape(4, 4), np.ones((8, 8), dtype=np.int64)) * 255
    return np.repeat(blocks[:, :, None], 3, axis=2).astype(np.uint8)


def measure(root: Path, cache_size: int, workers: int | None) -> dict:
    """Each stage's seconds on one set, in this process (its peak memory is this set's)."""
    import torch

    from melanoma.data.cache import prepare_cache
    from melanoma.data.carve import build_splits
    from melanoma.data.check import check_dataset
    from melanoma.data.dataset import open_data
    from melanoma.data.splits import SplitConfig
    from melanoma.data.transforms import build_augmentation
    from melanoma.engine.config import TrainConfig

    seconds, peak = {}, {}
    started = time.perf_counter()
    report = check_dataset(root, None, on_bad="skip", workers=workers)
    seconds["check"] = time.perf_counter() - started
    peak["check"] = _peak_mb()
    started = time.perf_counter()
    splits = build_splits(report, SplitConfig())
    seconds["split"] = time.perf_counter() - started
    peak["split"] = _peak_mb()
    cache = root.parent / f"{root.name}-cache{cache_size}"
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    prepare_cache(root, cache_size, cache, on_bad="skip", workers=workers)
    seconds["prepare"] = time.perf_counter() - started  # its own check and split included
    peak["prepare"] = _peak_mb()
    started = time.perf_counter()
    augment = build_augmentation(TrainConfig().data.augment)
    train = open_data(cache, cache_size).dataset("train", augment, seed=0)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=0)
    next(iter(loader))
    seconds["first_batch"] = time.perf_counter() - started
    peak["first_batch"] = _peak_mb()
    return {
        "images": len(report.samples),
        "seconds": seconds,
        "peak_rss_mb": peak["first_batch"],
        "peak_rss_mb_after": peak,  # the process's peak so far, after each stage
        "data_mb": _megabytes(root),
        "cache_mb": _megabytes(cache),
        "splits": splits.counts(),
    }


def _peak_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own
    memory since its exec; ``ru_maxrss`` would also hold the parent's resident memory at the
    fork (5.9 GB when the parent holds the 4000 px lesion pictures), since exec keeps it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _megabytes(path: Path) -> float:
    """Disk blocks used (a memory-mapped array's untouched pages take none)."""
    return sum(f.stat().st_blocks * 512 for f in Path(path).rglob("*") if f.is_file()) / 2**20


def exponents(rows: list[dict]) -> list[dict]:
    """log(t2 / t1) / log(n2 / n1) of each stage between consecutive sizes."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        ratio = math.log(b["images"] / a["images"])
        out.append(
            {
                "from": a["images"],
                "to": b["images"],
                **{
                    s: math.log(max(b["seconds"][s], 1e-6) / max(a["seconds"][s], 1e-6)) / ratio
                    for s in STAGES
                },
            }
        )
    return out


def print_scale_table(rows: list[dict], growth: list[dict]) -> None:
    print(
        "| images | check s | split s | prepare s | prepare img/s | first batch s | "
        "peak RSS MB after check / prepare / batch | data MB | cache MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        s = r["seconds"]
        print(
            f"| {r['images']} | {s['check']:.1f} | {s['split']:.2f} | {s['prepare']:.1f} | "
            f"{r['images'] / s['prepare']:.0f} | {s['first_batch']:.2f} | "
            f"{_peaks(r)} | {r['data_mb']:.0f} | {r['cache_mb']:.0f} |"
        )
    print("\ngrowth exponent (1.0: linear)\n")
    print("| from -> to | " + " | ".join(STAGES) + " |")
    print("| --- | " + " | ".join("---" for _ in STAGES) + " |")
    for g in growth:
        print(f"| {g['from']} -> {g['to']} | " + " | ".join(f"{g[s]:.2f}" for s in STAGES) + " |")


def _peaks(row: dict) -> str:
    after = row.get("peak_rss_mb_after", {})
    return " / ".join(f"{after.get(s, math.nan):.0f}" for s in ("check", "prepare", "first_batch"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.cache_size, args.workers)))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="data-scale-"))
    rows = []
    for n in args.sizes:
        root = work / f"isic2020-{n}-{args.px}px"
        gen_s = generate(root, n, args.px, args.per_patient)
        cmd = [
            sys.executable,
            __file__,
            "--measure",
            str(root),
            "--cache-size",
            str(args.cache_size),
            "--sizes",
            *map(str, args.sizes),
            "--px",
            str(args.px),
        ]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        child = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=False)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            return child.returncode
        row = json.loads(child.stdout.strip().splitlines()[-1])
        row["generate_s"] = gen_s
        rows.append(row)
        print(f"{n} images: {row['seconds']} (generated in {gen_s:.0f} s)", flush=True)
    growth = exponents(rows)
    print_scale_table(rows, growth)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("work", "json", "measure")}
        settings |= {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        args.json.write_text(
            json.dumps({"settings": settings, "rows": rows, "growth": growth}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
