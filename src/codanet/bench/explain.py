"""`codanet bench explain`: what `codanet explain` costs with the shipped CPU model.

  * ms per explained image, one class (`explain`) and all classes (`explain_all`), at batch 1
    (one picture) and batch 32 (a folder), timed in turn (interleaved, median);
  * seconds per 100 video frames through the whole `codanet explain` video path: decode (PyAV),
    convert, explain (batches of 32), draw the map beside the frame, encode H.264.
"""
from __future__ import annotations

import os
import tempfile
import time
from fractions import Fraction

import numpy as np
import torch

from ..utils.io import write_json
from .layers import timed_together


def _model():
    from ..models import create_model
    from ..models.pretrained import available_weights
    if "fashion_mnist" in available_weights("coda_cpu").get("coda_cpu", []):
        return create_model("coda_cpu", pretrained="fashion_mnist"), "coda_cpu:fashion_mnist"
    return create_model("coda_cpu", num_classes=10).eval(), "coda_cpu (random weights)"


def video_seconds_per_100_frames(model, frames: int = 100, size: int = 64) -> float:
    from ..explain.explain_files import ExplainOptions, explain_video
    from ..explain.inputs import VideoWriter
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        clip = os.path.join(d, "clip.mp4")
        w = VideoWriter(clip, Fraction(25), size, size)
        for _ in range(frames):
            w.write((rng.random((size, size, 3)) * 255).astype(np.uint8))
        w.close()
        t = time.perf_counter()
        explain_video(model, clip, ExplainOptions(), d, "out", "cpu", progress=False)
        return (time.perf_counter() - t) * 100 / frames


def run(repeats: int = 5) -> dict:
    model, label = _model()
    rows = []
    for batch in (1, 32):
        x = torch.rand(batch, 1, 28, 28)
        t = timed_together(dict(forward=lambda x=x: model(x), one=lambda x=x: model.explain(x),
                                all=lambda x=x: model.explain_all(x)), repeats)
        rows.append(dict(batch=batch, **{f"{k}_ms_per_image": 1e3 * v / batch for k, v in t.items()}))
    video = video_seconds_per_100_frames(model)
    return dict(model=label, threads=torch.get_num_threads(), images=rows,
                video=dict(size="64x64 frames -> 28x28 model input", seconds_per_100_frames=video))


def format_table(result: dict) -> str:
    lines = [f"{result['model']}, {result['threads']} threads", "",
             "| batch | forward ms/image | one class ms/image | all classes ms/image |", "|---|---|---|---|"]
    for r in result["images"]:
        lines.append(f"| {r['batch']} | {r['forward_ms_per_image']:.2f} | {r['one_ms_per_image']:.2f} | "
                     f"{r['all_ms_per_image']:.2f} |")
    lines.append(f"\nvideo ({result['video']['size']}): {result['video']['seconds_per_100_frames']:.2f} s "
                 "per 100 frames (decode, explain, draw, encode)")
    return "\n".join(lines)


def main(args) -> int:
    result = run(args.repeats)
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
    return 0
