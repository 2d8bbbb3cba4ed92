"""Cascade latency and throughput on CPU: eager PyTorch vs torch.export vs ONNX Runtime.

    python benchmarks/inference.py [--cascade DIR] [--size 128] [--repeats 20] [--json out.json]

Without --cascade it builds an untrained FPN/resnet18 + resnet18 (crop mode) cascade at
--size: the speed of a cascade does not depend on its weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cascade", type=Path, help="a `melanoma cascade build` directory")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    from melanoma.cascade.model import Cascade, ClassifierSpec, SegmenterSpec
    from melanoma.export import write_programs
    from melanoma.models import create_classifier, create_segmenter

    if args.cascade:
        from melanoma.cascade.store import load_cascade

        cascade, meta = load_cascade(args.cascade)
        size = meta.input_size
    else:
        size = args.size
        cascade = Cascade(
            [create_segmenter("fpn", "resnet18")],
            [create_classifier("resnet18")],
            input_size=size,
            seg_specs=[SegmenterSpec(size)],
            cls_specs=[ClassifierSpec(size, "crop")],
        )
    cascade.eval()
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        write_programs(cascade, example, Path(tmp))
        program = torch.export.load(Path(tmp) / "cascade.pt2").module()
        onnx_path = Path(tmp) / "cascade.onnx"
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        rows = []
        for n in args.batches:
            images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
            numpy_images = images.numpy()
            eager = timed(lambda images=images: cascade(images), args.repeats)
            exported = timed(lambda images=images: program(images), args.repeats)
            onnx = timed(lambda x=numpy_images: session.run(None, {"images": x}), args.repeats)
            rows.append(
                {
                    "batch": n,
                    "eager_ms": eager * 1e3,
                    "torch_export_ms": exported * 1e3,
                    "onnxruntime_ms": onnx * 1e3,
                    "eager_img_s": n / eager,
                    "torch_export_img_s": n / exported,
                    "onnxruntime_img_s": n / onnx,
                    "onnx_vs_eager": eager / onnx,
                }
            )
    print(
        f"\ncascade input {size}x{size}, torch threads {torch.get_num_threads()}, "
        f"cpu {platform.processor() or platform.machine()}, {args.repeats} repeats\n"
    )
    print(
        "batch | eager ms (img/s) | torch.export ms (img/s) | ONNX Runtime ms (img/s) "
        "| ORT speed-up"
    )
    print("-" * 96)
    for r in rows:
        print(
            f"{r['batch']:>5} | {r['eager_ms']:8.1f} ({r['eager_img_s']:6.1f}) | "
            f"{r['torch_export_ms']:12.1f} ({r['torch_export_img_s']:6.1f}) | "
            f"{r['onnxruntime_ms']:13.1f} ({r['onnxruntime_img_s']:6.1f}) | "
            f"{r['onnx_vs_eager']:5.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps({"size": size, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
