"""`codanet bench models`: whole-model training and inference speed, explanation cost.

Measured in one run on this machine, as ratios:
  * training images/s (forward + backward + Adam step) of coda_s (32x32, batch 64) and the CPU
    preset coda_cpu (28x28, batch 64), each against the same model built from the materialised
    reference layers and against a ResNet-56 (CIFAR layout);
  * inference images/s of the same models;
  * contribution-map cost (one `explain`) against a forward pass;
  * all-class explanation (`explain_all`, one batched pass) against 10 single-class explanations,
    and against one single-class explanation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import create_model
from ..nn.reference import materialised_model
from ..utils.io import write_json
from .layers import conv_gflops, matmul_gflops, timed_together
from .resnet import ResNet56


def train_step(model, opt, x, y, k):
    """A closure for one training step: BCE on one-hot targets (eq. 9, lambda = 0), backward, update."""
    def step():
        out = model(x)
        loss = F.binary_cross_entropy_with_logits(out, F.one_hot(y, k).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def model_flops(model, x) -> float:
    """Multiply-adds of the low-rank forward pass x2 (FLOPs), x3 for a training step."""
    from .layers import layer_flops
    total, a = 0.0, torch.cat([x, 1 - x], 1)
    with torch.no_grad():
        for layer in model.layers:
            total += layer_flops(layer, a) / 3          # layer_flops counts forward + backward
            a = layer(a)
    return 3 * total


def measure(name: str, size: int, channels: int, batch: int, repeats: int, with_reference: bool) -> dict:
    torch.manual_seed(0)
    k = 10
    x, y = torch.rand(batch, channels, size, size), torch.randint(0, k, (batch,))
    coda = create_model(name, num_classes=k, in_channels=channels)
    models: dict[str, torch.nn.Module] = {"CoDA (low-rank)": coda}
    if with_reference:
        models["CoDA (materialised)"] = materialised_model(coda)
    models["ResNet-56"] = ResNet56(k, channels)
    # Each comparison times its contenders in turn (a, b, c, a, b, c, ...), see `timed_together`.
    for m in models.values():
        m.train()
    t_train = timed_together({label: train_step(m, torch.optim.Adam(m.parameters(), 1e-4), x, y, k)
                              for label, m in models.items()}, repeats)
    for m in models.values():
        m.eval()
    with torch.no_grad():
        t_inf = timed_together({label: (lambda m=m: m(x)) for label, m in models.items()}, repeats)
    row = {label: dict(train_images_per_second=batch / t_train[label],
                       inference_images_per_second=batch / t_inf[label]) for label in models}
    row["CoDA (low-rank)"]["train_gflops"] = model_flops(coda, x) / t_train["CoDA (low-rank)"] / 1e9
    xe = x[:16]
    t = timed_together(dict(forward=lambda: coda(xe), one=lambda: coda.explain(xe, target=0),
                            all=lambda: coda.explain_all(xe)), repeats)
    t_fwd, t_one, t_all = t["forward"], t["one"], t["all"]
    return dict(model=name, size=size, batch=batch, results=row,
                explain=dict(forward_ms_per_image=1e3 * t_fwd / 16, explain_ms_per_image=1e3 * t_one / 16,
                             explain_all_ms_per_image=1e3 * t_all / 16,
                             explain_over_forward=t_one / t_fwd, all_class_over_single=t_all / t_one,
                             all_class_over_ten_single=t_all / (10 * t_one)))


def run(repeats: int = 3, with_reference: bool = True, glibc_defaults: bool = False) -> dict:
    """`glibc_defaults`: leave malloc as a plain Python process has it (large blocks returned to the
    OS and page-faulted in again), instead of `keep_freed_memory()`; the materialised model, which
    allocates far more, suffers much more from that."""
    from ..utils.perf import keep_freed_memory
    if not glibc_defaults:
        keep_freed_memory()
    mm, conv = matmul_gflops(), conv_gflops()
    out = [measure("coda_s", 32, 3, 64, repeats, with_reference),
           measure("coda_cpu", 28, 1, 64, repeats, with_reference)]
    for r in out:
        res = r["results"]
        coda = res["CoDA (low-rank)"]
        mat = res.get("CoDA (materialised)")
        r["ratios"] = dict(
            train_vs_materialised=coda["train_images_per_second"] / mat["train_images_per_second"] if mat else None,
            train_vs_resnet56=coda["train_images_per_second"] / res["ResNet-56"]["train_images_per_second"],
            inference_vs_materialised=(coda["inference_images_per_second"] / mat["inference_images_per_second"]
                                       if mat else None),
            inference_vs_resnet56=coda["inference_images_per_second"] / res["ResNet-56"]["inference_images_per_second"],
            train_flop_rate_vs_matmul=coda["train_gflops"] / mm,
            train_flop_rate_vs_conv=coda["train_gflops"] / conv)
    return dict(matmul_gflops=mm, conv_gflops=conv, threads=torch.get_num_threads(), torch=torch.__version__,
                allocator="glibc defaults" if glibc_defaults else "keep_freed_memory", models=out)


def format_table(result: dict) -> str:
    lines = ["| model | input, batch | implementation | train img/s | inference img/s |", "|---|---|---|---|---|"]
    for r in result["models"]:
        for label, v in r["results"].items():
            lines.append(f"| {r['model']} | {r['size']}x{r['size']}, {r['batch']} | {label} | "
                         f"{v['train_images_per_second']:.1f} | {v['inference_images_per_second']:.1f} |")
    lines += ["", "| model | train vs materialised | train vs ResNet-56 | inference vs materialised "
              "| inference vs ResNet-56 | train FLOP rate / matmul (/ conv) | explain / forward "
              "| all-class / single | all-class / 10 single |",
              "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    for r in result["models"]:
        q, e = r["ratios"], r["explain"]
        lines.append(f"| {r['model']} | {fmt(q['train_vs_materialised'])} | {fmt(q['train_vs_resnet56'])} | "
                     f"{fmt(q['inference_vs_materialised'])} | {fmt(q['inference_vs_resnet56'])} | "
                     f"{100 * q['train_flop_rate_vs_matmul']:.0f} % ({100 * q['train_flop_rate_vs_conv']:.0f} %) | "
                     f"{e['explain_over_forward']:.2f}x | "
                     f"{e['all_class_over_single']:.2f}x | {e['all_class_over_ten_single']:.2f}x |")
    lines.append(f"\nsame-run matmul: {result['matmul_gflops']:.0f} GFLOP/s, 3x3 convolution: "
                 f"{result['conv_gflops']:.0f} GFLOP/s, on {result['threads']} threads; "
                 f"allocator: {result['allocator']}")
    return "\n".join(lines)


def main(args) -> int:
    result = run(args.repeats, not args.no_reference, args.glibc_defaults)
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
