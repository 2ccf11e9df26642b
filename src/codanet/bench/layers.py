"""`codanet bench layers`: each of the nine coda_s layers (batch 64, 32x32 input), efficient
low-rank layer against the literal materialised eq. 1, forward + backward.

Time: median of `repeats` after a warm-up.  FLOPs: the efficient algorithm's multiply-adds
(conv A'^T x, conv Bx, Gram quadratic form) x2 for forward, x3 for forward+backward; both
implementations are credited with the same count, so GFLOP/s compares to a same-run matmul.
Peak memory: each measurement runs in a fresh subprocess (glibc's default allocator, which returns
large freed blocks to the OS) and reports how far the resident set's high-water mark (VmHWM, reset
after the set-up) rises above the resident set during one forward+backward.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ..utils.io import write_json
from ..utils.perf import keep_freed_memory


def _layer_inputs(batch: int, seed: int = 0):
    from ..models import create_model
    torch.manual_seed(seed)
    model = create_model("coda_s", num_classes=10)
    a = torch.rand(batch, 3, 32, 32)
    a = torch.cat([a, 1 - a], 1)
    inputs = []
    with torch.no_grad():
        for layer in model.layers:
            inputs.append(a)
            a = layer(a)
    return model, inputs


def _step(impl: str, layer, a: torch.Tensor):
    from ..nn.reference import dau_conv2d_reference
    a = a.detach().requires_grad_()
    if impl == "efficient":
        out = layer(a)
    else:
        A, B, b = (p.flatten(2).transpose(1, 2) if i == 0 else p.flatten(1)
                   for i, p in enumerate((layer.A_T, layer.B, layer.b)))
        out = dau_conv2d_reference(a, A, B, b, layer.kernel_size, layer.stride, layer.padding,
                                   layer.nonlinearity)
    out.backward(torch.ones_like(out))
    return out


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_worker(impl: str, index: int, batch: int) -> None:
    """Runs in a fresh process with glibc's default allocator (large blocks are returned to the
    OS when freed, so the resident set follows the live tensors).  After the set-up the peak
    (VmHWM) is reset to the current resident set, so the reported growth is the step's own."""
    torch.set_num_threads(1)
    model, inputs = _layer_inputs(batch)
    layer, a = model.layers[index], inputs[index].clone()
    del inputs
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # reset VmHWM to the current VmRSS
    before = _status_kb("VmRSS")
    _step(impl, layer, a)
    print(json.dumps({"peak_bytes": max(0, _status_kb("VmHWM") - before) * 1024}))


def peak_memory(impl: str, index: int, batch: int) -> int:
    code = f"from codanet.bench.layers import _peak_worker; _peak_worker({impl!r}, {index}, {batch})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def layer_flops(layer, a: torch.Tensor) -> float:
    n, _, h, w = a.shape
    ho = (h + 2 * layer.padding - layer.kernel_size) // layer.stride + 1
    wo = (w + 2 * layer.padding - layer.kernel_size) // layer.stride + 1
    d, r1, c = layer.in_channels * layer.kernel_size ** 2, layer.rank + 1, layer.out_channels
    macs = n * ho * wo * (c * r1 * d + layer.rank * d + c * r1 * r1)
    return 2.0 * 3 * macs


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a size x size float32 matmul (torch.mm)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / timed(lambda: a @ b, repeats) / 1e9


def conv_gflops(repeats: int = 5) -> float:
    """GFLOP/s of a large 3x3 convolution (64x64x16x16 -> 512 channels, channels-last).

    On some CPUs (e.g. AMD with MKL) torch.mm runs at half the rate of oneDNN's convolutions,
    which the DAU layers use, so a FLOP rate is also reported against this kernel."""
    x = torch.randn(64, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 64, 3, 3)
    return 2 * 64 * 16 * 16 * 512 * 64 * 9 / timed(lambda: F.conv2d(x, w, padding=1), repeats) / 1e9


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of fn after one warm-up call."""
    return timed_together({"fn": fn}, repeats)["fn"]


def timed_together(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, calling them in turn (a, b, c, a, b, c, ...).

    Interleaving makes ratios between them robust to the machine's load drifting during a run."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def run(batch: int = 64, repeats: int = 3, memory: bool = True, progress: bool = True) -> dict:
    from tqdm import tqdm
    keep_freed_memory()
    model, inputs = _layer_inputs(batch)
    mm, conv = matmul_gflops(), conv_gflops()
    rows = []
    for i in tqdm(range(len(model.layers)), desc="layers", disable=not progress):
        layer, a = model.layers[i], inputs[i]
        t = timed_together({impl: (lambda impl=impl, layer=layer, a=a: _step(impl, layer, a))
                            for impl in ("efficient", "reference")}, repeats)
        t_eff, t_ref = t["efficient"], t["reference"]
        flops = layer_flops(layer, a)
        row = dict(layer=i + 1, shape=f"{layer.in_channels}->{layer.out_channels} k{layer.kernel_size} "
                   f"s{layer.stride} r{layer.rank} @{a.shape[2]}", efficient_ms=t_eff * 1e3,
                   reference_ms=t_ref * 1e3, speedup=t_ref / t_eff, gflops=flops / t_eff / 1e9,
                   matmul_fraction=flops / t_eff / 1e9 / mm)
        if memory:
            row["efficient_peak_mb"] = peak_memory("efficient", i, batch) / 2**20
            row["reference_peak_mb"] = peak_memory("reference", i, batch) / 2**20
            row["memory_ratio"] = row["reference_peak_mb"] / max(row["efficient_peak_mb"], 1e-9)
        rows.append(row)
    summary = dict(
        median_speedup=statistics.median(r["speedup"] for r in rows),
        median_matmul_fraction=statistics.median(r["matmul_fraction"] for r in rows),
        matmul_gflops=mm, conv_gflops=conv, batch=batch, threads=torch.get_num_threads(), torch=torch.__version__)
    if memory:
        summary["median_memory_ratio"] = statistics.median(r["memory_ratio"] for r in rows)
    return dict(rows=rows, summary=summary)


def format_table(result: dict) -> str:
    rows, s = result["rows"], result["summary"]
    mem = "efficient_peak_mb" in rows[0]
    head = "| layer | shape | efficient ms | reference ms | speed-up | GFLOP/s | of matmul |"
    head += " peak MB eff | peak MB ref | memory ratio |" if mem else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['layer']} | {r['shape']} | {r['efficient_ms']:.0f} | {r['reference_ms']:.0f} | "
                f"{r['speedup']:.1f}x | {r['gflops']:.0f} | {100 * r['matmul_fraction']:.0f} % |")
        if mem:
            line += f" {r['efficient_peak_mb']:.0f} | {r['reference_peak_mb']:.0f} | {r['memory_ratio']:.1f}x |"
        lines.append(line)
    tail = (f"\nmedian speed-up {s['median_speedup']:.1f}x, median {100 * s['median_matmul_fraction']:.0f} % "
            f"of the same-run matmul rate ({s['matmul_gflops']:.0f} GFLOP/s; a 3x3 convolution ran at "
            f"{s['conv_gflops']:.0f} GFLOP/s; {s['threads']} threads)")
    if mem:
        tail += f", median peak-memory ratio {s['median_memory_ratio']:.1f}x"
    return "\n".join(lines) + tail


def main(args) -> int:
    result = run(batch=args.batch, repeats=args.repeats, memory=not args.no_memory)
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
