"""Loss (eq. 9-10), configs, the training loop, checkpoints and resume."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from codanet.models import CoDANet
from codanet.nn.reference import dau_conv2d_reference, layer_matrix
from codanet.train import coda_loss, learning_rate, make_config, parse_set, train
from codanet.train.checkpoint import read_checkpoint
from codanet.train.loss import other_classes


def tiny_net(**kw):
    torch.manual_seed(0)
    net = CoDANet(in_channels=1, num_classes=4, kernel_sizes=[3, 3, 1], strides=[1, 2, 1],
                  paddings=[1, 1, 0], channels=[3, 3, 4], ranks=[2, 2, 2], temperature=7.0, **kw).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.b.normal_(0, 0.5)
    return net


def test_bce_equals_hand_computation():
    net = tiny_net()
    x = torch.rand(3, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    loss, logits, _ = coda_loss(net, x, y)
    p = torch.sigmoid(logits)
    t = F.one_hot(y, 4).double()
    by_hand = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert torch.allclose(loss, by_hand, rtol=1e-10)


def _brute_force_W(net, x):
    """W_{0->L}(x) (K, D) as a product of materialised layer matrices, differentiable in the params."""
    a, mats = torch.cat([x, 1 - x], 0), []
    for layer in net.layers:
        A, B, b = layer.A_T.flatten(2).transpose(1, 2), layer.B.flatten(1), layer.b.flatten(1)
        mats.append(layer_matrix(layer, a, (A, B, b)))
        a = dau_conv2d_reference(a[None], A, B, b, layer.kernel_size, layer.stride, layer.padding,
                                 layer.nonlinearity)[0]
    W = mats[-1]
    for M in reversed(mats[:-1]):
        W = W @ M
    K = net.num_classes
    return W.view(K, -1, W.shape[1]).sum(1)                   # sum over final positions


def test_lambda_term_matches_brute_force():
    net = tiny_net()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([2, 0])
    lam = 0.3
    loss, logits, parts = coda_loss(net, x, y, lam, torch.Generator().manual_seed(5))
    grads = torch.autograd.grad(loss, list(net.parameters()))

    others = other_classes(y, 4, torch.Generator().manual_seed(5))
    Ws = [_brute_force_W(net, x[i]) for i in range(2)]
    reg = torch.stack([torch.stack([W[y[i]], W[others[i]]]).abs().mean() for i, W in enumerate(Ws)]).mean()
    bce = F.binary_cross_entropy_with_logits(
        torch.stack([W @ torch.cat([x[i], 1 - x[i]], 0).flatten() for i, W in enumerate(Ws)]) / net.temperature
        + net.logit_bias, F.one_hot(y, 4).double())
    ref = bce + lam * reg
    ref_grads = torch.autograd.grad(ref, list(net.parameters()))
    assert abs(parts["reg"] - reg.item()) <= 1e-10 * abs(reg.item())
    assert torch.allclose(loss, ref, rtol=1e-10)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-12)


def test_schedules():
    cifar = make_config({"lr": 2.5e-4, "schedule": "step", "lr_step_epochs": 30, "lr_gamma": 1 / 1.5})
    assert learning_rate(cifar, 0) == 2.5e-4 and abs(learning_rate(cifar, 65) - 2.5e-4 / 1.5 ** 2) < 1e-15
    inet = make_config({"lr": 1e-3, "schedule": "warmup", "warmup_epochs": 15, "warmup_start_lr": 2.5e-4,
                        "lr_step_epochs": 20, "lr_gamma": 0.5})
    assert learning_rate(inet, 0) == 2.5e-4 and abs(learning_rate(inet, 7.5) - 6.25e-4) < 1e-12
    assert learning_rate(inet, 15) == 1e-3 and learning_rate(inet, 36) == 5e-4


def test_config_errors():
    with pytest.raises(ValueError, match="unknown config key.*valid keys: accumulate"):
        make_config({"epoch": 3})
    with pytest.raises(ValueError, match="'batch_size': expected a positive integer"):
        make_config({"batch_size": -4})
    with pytest.raises(ValueError, match="'lr'"):
        make_config(parse_set(["lr=abc"]))
    with pytest.raises(ValueError, match="unknown model"):
        make_config({"model": "resnet"})
    assert parse_set(["lr=1", "temperature=null", "augment=crop_flip"]) == {
        "lr": 1.0, "temperature": None, "augment": "crop_flip"}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "codanet", *args], capture_output=True, text=True, **kw)


def test_cli_rejects_bad_config_with_exit_code_2(tmp_path):
    r = _cli("train", "mnist_5k", "--set", "nope=1")
    assert r.returncode == 2 and "unknown config key" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "mnist_5k", "--set", "epochs=0")
    assert r.returncode == 2 and "epochs" in r.stderr
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    r = _cli("train", str(bad))
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    r = _cli("train", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not found" in r.stderr
    r = _cli("evaluate", str(tmp_path))
    assert r.returncode == 2 and "directory" in r.stderr


TINY = dict(model="coda_cpu", dataset="mnist_5k", max_train_images=96, max_test_images=64, batch_size=16,
            epochs=2, lr=2e-3, checkpoint_every_steps=2, keep_checkpoints=2, threads=1)


def test_tiny_training_reduces_loss_and_writes_outputs(tmp_path):
    from codanet.data import load_dataset, make_batch
    from codanet.train import load_model
    cfg = make_config(dict(TINY, epochs=4, max_train_images=128, temperature=20.0))
    ds = load_dataset("mnist_5k", "train").subset(range(128))
    x, y = make_batch(ds, range(128), "none", None, train=False), ds.labels
    from codanet.train.setup import build_model
    torch.manual_seed(cfg["seed"])
    with torch.no_grad():
        before = coda_loss(build_model(cfg, 10, 1), x, y)[0].item()
    summary = train(cfg, str(tmp_path), progress=False)
    model, state = load_model(str(tmp_path / "model.safetensors"))
    with torch.no_grad():
        after = coda_loss(model, x, y)[0].item()
    assert after < 0.8 * before
    assert {"test_accuracy", "epochs", "train_seconds", "images_per_second", "model", "temperature"} <= set(summary)
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 4
    assert len(os.listdir(tmp_path / "checkpoints")) <= 2
    assert (tmp_path / "log.csv").read_text().count("\n") == 5


def _weights(path):
    tensors, _ = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    """A real subprocess, killed with SIGKILL after its first checkpoint, then --resume."""
    import signal
    import time
    sets = [f"--set={k}={json.dumps(v)}" for k, v in dict(TINY, epochs=3, max_train_images=160).items()]
    ref = _cli("train", "mnist_5k", *sets, "--quiet", "--out", str(tmp_path / "a"), timeout=600)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([sys.executable, "-m", "codanet", "train", "mnist_5k", *sets, "--quiet",
                             "--out", str(tmp_path / "b")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            ckpts.exists() and any(ckpts.glob("step-*.safetensors"))):
        time.sleep(0.02)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL) if killed else None
    proc.wait()
    assert killed, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "model.safetensors").exists()
    res = _cli("train", "mnist_5k", *sets, "--quiet", "--out", str(tmp_path / "b"), "--resume", timeout=600)
    assert res.returncode == 0, res.stderr
    a, b = _weights(tmp_path / "a" / "model.safetensors"), _weights(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_config(tmp_path):
    cfg = make_config(dict(TINY, epochs=1))
    train(cfg, str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume"):
        train(cfg, str(tmp_path), progress=False)               # never overwrite an earlier run
    with pytest.raises(ValueError, match="config differs.*lr"):
        train(make_config(dict(TINY, epochs=1, lr=1e-2)), str(tmp_path), resume=True, progress=False)


def test_prefetch_modes_train_identical_weights(tmp_path):
    """Batches built in a background thread (the default) == built inline, bit for bit."""
    for mode in ("none", "thread"):
        train(make_config(dict(TINY, epochs=1, lam=0.1, augment="crop_flip", prefetch=mode)),
              str(tmp_path / mode), progress=False)
    a, b = _weights(tmp_path / "none" / "model.safetensors"), _weights(tmp_path / "thread" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
