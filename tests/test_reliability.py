"""Reliability: safe checkpoints, crash safety, clear errors, numerics at the extremes."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

import codanet
from codanet.train import make_config, train
from codanet.train.checkpoint import average_models, load_into, load_model, read_checkpoint, save_checkpoint
from codanet.train.trainer import TrainingStopped
from conftest import tiny_model

TINY = dict(model="coda_cpu", dataset="mnist_5k", max_train_images=96, max_test_images=32, batch_size=16,
            epochs=2, lr=2e-3, checkpoint_every_steps=1, keep_checkpoints=3, threads=1, temperature=50.0)


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f)
    torch_bad = tmp_path / "torch.pt"
    torch.save({"x": _Payload(marker)}, torch_bad)
    for path in (bad, torch_bad):
        with pytest.raises(ValueError, match="not a safetensors checkpoint.*pickle"):
            load_model(str(path))
        r = subprocess.run([sys.executable, "-m", "codanet", "evaluate", str(path)], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "safetensors" in r.stderr
    assert not marker.exists()


def test_checkpoint_checked_against_model(tmp_path):
    model = tiny_model("coda_cpu")
    path = save_checkpoint(str(tmp_path / "c.safetensors"), model)
    other = tiny_model("coda_cpu", temperature=7.0)
    with pytest.raises(ValueError, match="temperature: model has 7.0, checkpoint has 500.0"):
        load_into(other, path)
    with pytest.raises(ValueError, match="num_classes"):
        load_into(tiny_model("coda_cpu", num_classes=5, channels=[4] * 8 + [5]), path)
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(IsADirectoryError):
        load_model(str(tmp_path))
    loaded, _ = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_average_models_is_the_mean_of_the_weights(tmp_path):
    models = [tiny_model("coda_cpu") for _ in range(3)]               # three different random inits
    paths = [save_checkpoint(str(tmp_path / f"c{i}.safetensors"), m) for i, m in enumerate(models)]
    mean, state = average_models(paths)
    for name, value in mean.state_dict().items():
        expected = sum(m.state_dict()[name].double() for m in models) / 3
        assert torch.allclose(value.double(), expected, atol=1e-6), name
    assert state["averaged_from"] == paths
    x = torch.rand(2, 1, 28, 28)
    out = mean.explain(x)                                   # the mean is a CoDA-Net like any other
    logit = out["logits"].gather(1, out["target"][:, None])[:, 0]
    assert torch.allclose(out["contributions"].sum((1, 2)), logit - mean.logit_bias, atol=1e-3)
    with pytest.raises(ValueError, match="at least two"):
        average_models(paths[:1])
    save_checkpoint(str(tmp_path / "t.safetensors"), tiny_model("coda_cpu", temperature=7.0))
    with pytest.raises(ValueError, match="cannot average .*temperature"):
        average_models([paths[0], str(tmp_path / "t.safetensors")])


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    model = tiny_model("coda_cpu")
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, model)
    before = open(path, "rb").read()
    import safetensors.torch

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from codanet.train import trainer
    calls = {"n": 0}
    real = trainer.coda_loss

    def flaky(*a, **k):
        calls["n"] += 1
        loss, logits, parts = real(*a, **k)
        return (loss * float("nan") if calls["n"] == 4 else loss), logits, parts
    monkeypatch.setattr(trainer, "coda_loss", flaky)
    with pytest.raises(TrainingStopped, match="loss is nan.*last good checkpoint"):
        train(make_config(TINY), str(tmp_path), progress=False)
    ckpts = sorted((tmp_path / "checkpoints").glob("step-*.safetensors"))
    assert ckpts and ckpts[-1].name == "step-000000003.safetensors"
    tensors, _ = read_checkpoint(str(ckpts[-1]))
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point())


def test_sigterm_writes_checkpoint_and_resume_matches(tmp_path):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in dict(TINY, epochs=6, checkpoint_every_steps=50).items()]
    cmd = [sys.executable, "-m", "codanet", "train", "mnist_5k", *sets, "--quiet"]
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = tmp_path / "b" / "log.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not log.exists():
        time.sleep(0.02)                                     # the first epoch is done
    assert proc.poll() is None, "finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in out
    assert any((tmp_path / "b" / "checkpoints").glob("step-*.safetensors"))
    r = subprocess.run(cmd + ["--out", str(tmp_path / "b"), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    a, _ = read_checkpoint(str(tmp_path / "a" / "model.safetensors"))
    b, _ = read_checkpoint(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


@pytest.mark.parametrize("fill", [0.0, 1.0, 0.5, "random"])
@pytest.mark.parametrize("temperature", [1.0, 1e6])
def test_explanations_finite_and_complete_at_extremes(fill, temperature):
    model = tiny_model("coda_cpu", temperature=temperature)
    x = torch.rand(2, 1, 14, 14) if fill == "random" else torch.full((2, 1, 14, 14), fill)
    out = model.explain(x)
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["contributions"]).all()
    picked = out["logits"].gather(1, out["target"][:, None])[:, 0] - model.logit_bias
    total = out["contributions"].sum((1, 2))
    # float32: |sum - (logit - b0)| <= 1e-5 * (|logit - b0| + sum |contributions|) + 1e-6 * |logit|
    # (the last term: the logit itself is stored in float32, ulp(2.2) = 2.4e-7)
    logit = out["logits"].gather(1, out["target"][:, None])[:, 0]
    tol = 1e-5 * (picked.abs() + out["contributions"].abs().sum((1, 2))) + 1e-6 * logit.abs()
    assert ((total - picked).abs() <= tol).all()
    allc = model.explain_all(x)
    assert torch.isfinite(allc["contributions"]).all()


@pytest.mark.parametrize("fill", [0.0, 1.0, 0.5])
def test_training_step_finite_on_constant_images_and_bf16(fill):
    from codanet.train import coda_loss
    model = tiny_model("coda_cpu", temperature=1.0)
    x = torch.full((4, 1, 14, 14), fill)
    y = torch.tensor([0, 1, 2, 3])
    for lam in (0.0, 0.5):
        loss, _, _ = coda_loss(model, x, y, lam)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = coda_loss(model, x, y)
        out = model.explain(torch.rand(2, 1, 14, 14))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out["contributions"]).all()
    picked = out["logits"].float().gather(1, out["target"][:, None])[:, 0] - model.logit_bias
    # bf16 has 8 mantissa bits: completeness holds to ~2 % of the contributions' mass
    assert ((out["contributions"].float().sum((1, 2)) - picked).abs()
            <= 0.02 * out["contributions"].float().abs().sum((1, 2)) + 1e-3).all()


def test_keeps_last_k_checkpoints(tmp_path):
    train(make_config(dict(TINY, epochs=1, keep_checkpoints=2)), str(tmp_path), progress=False)
    assert len(list((tmp_path / "checkpoints").glob("step-*.safetensors"))) == 2
    assert not list(tmp_path.rglob(".tmp-*"))
    _ = codanet


def test_atomic_files_get_the_usual_permissions(tmp_path):
    from codanet.utils.io import write_json
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_a_journal_line_cut_short_by_a_kill_costs_only_itself(tmp_path):
    """`append_line` ends a torn last line before appending, so the next entry stays readable."""
    from codanet.utils.io import append_line
    path = str(tmp_path / "journal.jsonl")
    append_line(path, '{"grid": 0}')
    with open(path, "a") as f:
        f.write('{"grid": 1, "sco')                                  # killed mid-write
    append_line(path, '{"grid": 2}')
    lines = open(path).read().splitlines()
    assert lines == ['{"grid": 0}', '{"grid": 1, "sco', '{"grid": 2}']
