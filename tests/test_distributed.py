"""Two gloo processes (torchrun on 127.0.0.1) with half the batch each == one process, full batch."""
import json
import socket
import subprocess
import sys

import torch

from codanet.train.checkpoint import read_checkpoint

CFG = dict(model="coda_cpu", dataset="mnist_5k", max_train_images=64, max_test_images=32, batch_size=16,
           epochs=1, optimizer="sgd", lr=0.5, schedule="constant", augment="none", threads=1,
           checkpoint_every_steps=100, temperature=50.0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out, procs, extra=(), **over):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in dict(CFG, **over).items()]
    if procs == 1:
        cmd = [sys.executable, "-m", "codanet"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "codanet"]
    r = subprocess.run(cmd + ["train", "mnist_5k", *sets, "--quiet", "--out", str(out), *extra],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    tensors, state = read_checkpoint(str(out / "model.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}, state


def _close(a, b):
    # float32 gradients agree to ~3e-6 (relative) whatever the summation order; after 4 SGD steps
    # the weights agree to 1e-5 relative.  (Adam is not used here: its first steps are
    # lr * sign(g), so gradients that are ~0 flip the update by 2 lr on float noise alone.)
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_two_ranks_match_one_process_and_resume(tmp_path):
    one, _ = _train(tmp_path / "one", 1)
    two, state = _train(tmp_path / "two", 2)
    assert _close(one, two)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["test_images"] == 32
    # rank-0 checkpoints resume: continue the 2-process run for a second epoch
    resumed, _ = _train(tmp_path / "two", 2, ["--resume"], epochs=2)
    straight, _ = _train(tmp_path / "straight", 2, epochs=2)
    assert _close(resumed, straight)
    assert not _close(resumed, two)


METRICS_SCRIPT = """
import json, sys, torch
import codanet
from codanet.evaluate.localisation import localisation
from codanet.evaluate.pixel_removal import pixel_removal
from codanet.explain.baselines import make_methods
from codanet.train import distributed

torch.manual_seed(0)
model = codanet.create_model("coda_cpu", num_classes=10, channels=[4] * 8 + [10], ranks=[3] * 9)
images, labels = torch.rand(10, 1, 8, 8), torch.arange(10)
grids = [[(c % 10, c % 10) for c in range(k, k + 4)] for k in range(7)]      # 7 grids: uneven over 2 ranks
ctx = distributed.setup(torch.device("cpu"))
out = {}
for name, m in make_methods(model, ["CoDA", "IxG"], 8).items():
    journal = f"{sys.argv[2]}/{name}"                # grids 0-2 kept there by an earlier, stopped run
    loc = localisation(model, m, images, labels, grid_size=2, grid_cells=grids, progress=False, ctx=ctx,
                       journal=journal)
    rem = pixel_removal(model, m, images[:9], labels[:9], steps=8, progress=False, ctx=ctx)
    out[name] = dict(scores=loc["scores"], per_class=loc["per_class"], curve=rem["curve"])
if ctx.main:
    json.dump(out, open(sys.argv[1], "w"))
distributed.teardown()
"""


def test_metrics_shard_over_ranks_and_match_one_process(tmp_path):
    script = tmp_path / "metrics.py"
    script.write_text(METRICS_SCRIPT)
    results = {}
    for procs in (1, 2):
        out, kept = tmp_path / f"{procs}.json", tmp_path / f"journal{procs}"
        kept.mkdir()
        for name in ("CoDA", "IxG"):          # a stopped run's journal: grids 0-2, marked by their scores
            lines = [json.dumps(dict(grid=i, scores=[0.5] * 4, seconds=1.0)) for i in range(3)]
            (kept / f"{name}.0.jsonl").write_text("\n".join(lines) + "\n")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(out), str(kept)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        results[procs] = json.loads(out.read_text())
        # the 4 grids left were scored now, each by one rank, and appended to that rank's journal
        for name in ("CoDA", "IxG"):
            added = [json.loads(line)["grid"] for k in range(procs)
                     for line in (kept / f"{name}.{k}.jsonl").read_text().splitlines()[3 if k == 0 else 0:]]
            assert sorted(added) == [3, 4, 5, 6]
    for name in ("CoDA", "IxG"):
        one, two = results[1][name], results[2][name]
        assert len(one["scores"]) == 28 and one["scores"][:12] == two["scores"][:12] == [0.5] * 12
        # same grids in the same order; float32 sums differ in the last bits with the thread count
        assert torch.allclose(torch.tensor(one["scores"]), torch.tensor(two["scores"]), rtol=1e-5, atol=1e-7)
        assert one["per_class"].keys() == two["per_class"].keys()
        assert torch.allclose(torch.tensor(list(one["per_class"].values())),
                              torch.tensor(list(two["per_class"].values())), rtol=1e-5)
        assert torch.allclose(torch.tensor(one["curve"]), torch.tensor(two["curve"]), atol=1e-6)
        assert len(set(one["scores"][12:])) > 8                # distinct numbers: the comparison is not vacuous
