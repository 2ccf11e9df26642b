#!/usr/bin/env python
"""GPU check for codanet, < 5 minutes on one GPU:  python scripts/device_check.py [--json OUT]

Prints training images/s of coda_s at batch 64 and 256 (32x32) and of coda_l at 240x240 (bf16
autocast, DAU norms in float32, channels-last), the peak GPU memory of each, and the largest
difference between CPU (float64) and GPU (float32 and bf16) logits and contributions for the
same weights and inputs.  On a machine without CUDA it says "no GPU" and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import codanet  # noqa: E402


def train_speed(name, batch, size, classes, steps=10, bf16=True):
    torch.cuda.reset_peak_memory_stats()
    model = codanet.create_model(name, num_classes=classes).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(batch, 3, size, size, device="cuda")
    y = torch.randint(0, classes, (batch,), device="cuda")
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), F.one_hot(y, classes).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return dict(model=name, batch=batch, size=size, images_per_second=steps * batch / (time.perf_counter() - t),
                peak_memory_gb=torch.cuda.max_memory_allocated() / 2**30)


def cpu_gpu_difference():
    torch.manual_seed(0)
    model = codanet.create_model("coda_s", num_classes=10)
    x = torch.rand(8, 3, 32, 32)
    ref = model.double().explain(x.double(), target=torch.arange(8) % 10)
    out = {}
    for label, bf16 in (("float32", False), ("bf16", True)):
        gpu = model.float().cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            e = gpu.explain(x.cuda(), target=torch.arange(8).cuda() % 10)
        scale = ref["contributions"].abs().max().item()
        out[label] = dict(
            logits_max_abs_diff=(e["logits"].double().cpu() - ref["logits"]).abs().max().item(),
            contributions_max_abs_diff=(e["contributions"].double().cpu() - ref["contributions"]).abs().max().item(),
            contributions_scale=scale)
        model = model.double().cpu()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: CUDA is not available on this machine; nothing to check (the CPU path is covered by make test)")
        return 0
    print(f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    results = dict(gpu=torch.cuda.get_device_name(), speed=[], difference=None)
    for name, batch, size, classes in (("coda_s", 64, 32, 10), ("coda_s", 256, 32, 10), ("coda_l", 32, 240, 100)):
        r = train_speed(name, batch, size, classes)
        results["speed"].append(r)
        print(f"{name} train, batch {batch}, {size}x{size}: {r['images_per_second']:.0f} images/s, "
              f"peak memory {r['peak_memory_gb']:.2f} GiB")
    results["difference"] = cpu_gpu_difference()
    for label, d in results["difference"].items():
        print(f"CPU float64 vs GPU {label}: max |logit diff| {d['logits_max_abs_diff']:.2e}, max |contribution diff| "
              f"{d['contributions_max_abs_diff']:.2e} (contributions up to {d['contributions_scale']:.2e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
