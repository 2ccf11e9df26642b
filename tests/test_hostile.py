"""Hostile files and absurd settings: each case is a clear one-line error with exit code 2."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from codanet.cli import main
from codanet.train.checkpoint import save_checkpoint
from conftest import tiny_model


@pytest.fixture()
def good(tmp_path):
    """A valid checkpoint: (path, tensors, metadata state)."""
    model = tiny_model("coda_cpu")
    path = save_checkpoint(str(tmp_path / "good.safetensors"), model, None, dict(config=dict(dataset="mnist_5k")))
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, framework="pt") as f:
        state = json.loads(f.metadata()["codanet"])
    return path, load_file(path), state


def write(path, tensors, state):
    meta = state if isinstance(state, str) else json.dumps(state)
    save_file(tensors, str(path), metadata={"codanet": meta})
    return str(path)


def run_cli(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("mutate,needle", [
    (lambda s: s["arch"].update(num_classes="10"), "arch.num_classes"),          # 1: wrong type
    (lambda s: s["arch"].update(channels="lots"), "arch.channels"),
    (lambda s: s["arch"].update(num_classes=100_000_000), "arch.num_classes"),   # 2: huge model
    (lambda s: s["arch"].update(ranks=[1_000_000] * 9), "arch.ranks"),
    (lambda s: s["arch"].update(ranks=[4] * 9), "do not match the architecture"),  # 7: other tensors
    (lambda s: s["arch"].pop("temperature"), "arch.temperature: missing"),
    (lambda s: s.update(config=["not", "a", "dict"]), "config: expected an object"),
    (lambda s: s.update(classes=[1, 2]), "classes"),
])
def test_bad_metadata_is_refused_before_building(good, tmp_path, capsys, mutate, needle):
    _, tensors, state = good
    mutate(state)
    path = write(tmp_path / "bad.safetensors", tensors, state)
    rc, err = run_cli(["evaluate", path], capsys)
    one_line_error(rc, err, needle)


@pytest.mark.parametrize("meta", ['["a", "list"]', '"a string"', "{not json", json.dumps({"format": "x"})])
def test_metadata_that_is_not_an_object(good, tmp_path, capsys, meta):
    _, tensors, _ = good
    rc, err = run_cli(["evaluate", write(tmp_path / "bad.safetensors", tensors, meta)], capsys)
    one_line_error(rc, err, "not a codanet checkpoint")


def test_nan_weights_are_refused_with_their_names(good, tmp_path, capsys):
    _, tensors, state = good
    tensors["model.layers.3.A_T"][0, 0, 0, 0, 0] = float("nan")
    tensors["model.layers.5.b"][0] = float("inf")
    rc, err = run_cli(["evaluate", write(tmp_path / "nan.safetensors", tensors, state)], capsys)
    one_line_error(rc, err, "model.layers.3.A_T", "model.layers.5.b")


def test_unknown_dataset_fails_at_once(good, capsys):
    path, _, _ = good
    for argv in (["evaluate", path, "--dataset", "bogus"],
                 ["evaluate", "localisation", path, "--dataset", "bogus"]):
        rc, err = run_cli(argv, capsys)
        one_line_error(rc, err, "bogus", "fashion_mnist")


def test_targets_that_are_not_classes():
    model = tiny_model("coda_cpu")
    x = torch.rand(1, 1, 14, 14)
    for bad in ("3", "Trouser", {"a": 1}):
        with pytest.raises(ValueError, match="target"):
            model.explain(x, target=bad)


def test_readme_python_runs_as_written(tmp_path, monkeypatch):
    """Every ```python block of the README runs after a plain `import codanet`."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


TINY = ["--set", "dataset=mnist_5k", "--set", "max_train_images=64", "--set", "max_test_images=32",
        "--set", "batch_size=16", "--set", "epochs=2", "--set", "threads=1", "--set", "checkpoint_every_steps=1",
        "--set", "temperature=50", "--quiet"]


def mnist_or_skip():
    from codanet.data import load_dataset
    try:
        load_dataset("mnist_5k", "test", None)
    except (FileNotFoundError, ValueError, ImportError) as e:
        pytest.skip(f"mnist_5k not available ({e})")


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import errno

    import safetensors.torch
    mnist_or_skip()
    real, calls = safetensors.torch.save_file, []

    def fill_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            with open(filename, "wb") as f:
                f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(safetensors.torch, "save_file", fill_disk)
    out = tmp_path / "run"
    rc, err = run_cli(["train", "fashion_mnist_demo", "--out", str(out), *TINY], capsys)
    one_line_error(rc, err, "no space left in", str(out / "checkpoints"), "intact")
    files = sorted(os.listdir(out / "checkpoints"))
    assert files == ["step-000000001.safetensors", "step-000000002.safetensors"]   # no partial file
    from codanet.train.checkpoint import read_checkpoint
    read_checkpoint(str(out / "checkpoints" / files[-1]))                         # the last one is whole


@pytest.mark.parametrize("setting,needle", [
    ("rank=1000000", "rank"), ("threads=100000", "threads"), ("max_train_images=1000000000000", "max_train_images"),
    ("batch_size=10000000", "batch_size"), ("run_name=../../outside", "run_name"), ("run_name=/tmp/abs", "run_name"),
])
def test_absurd_settings_are_refused_before_any_work(tmp_path, capsys, setting, needle):
    rc, err = run_cli(["train", "fashion_mnist_demo", "--out", str(tmp_path / "r"), "--set", setting], capsys)
    one_line_error(rc, err, needle)
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r" / "checkpoints")


def test_memory_estimate_refuses_a_model_that_cannot_fit(tmp_path, capsys):
    mnist_or_skip()
    rc, err = run_cli(["train", "fashion_mnist_demo", "--out", str(tmp_path / "r"), "--set", "dataset=mnist_5k",
                       "--set", "rank=4096", "--set", "batch_size=4096"], capsys)
    one_line_error(rc, err, "GiB")


@pytest.mark.parametrize("text,needle", [
    ('{"epochs": 1, "epochs": 2}', "names key 'epochs' twice"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"epochs": 1e400}', "epochs"),
    ('{"epochs": "3"}', "epochs"),
])
def test_pathological_config_files(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.json"
    cfg.write_text(text)
    rc, err = run_cli(["train", str(cfg), "--out", str(tmp_path / "r")], capsys)
    one_line_error(rc, err, needle)


def test_a_second_training_into_the_same_folder_is_refused(tmp_path):
    from codanet.utils.io import folder_lock
    with folder_lock(str(tmp_path)):
        with pytest.raises(ValueError, match=f"in use by another codanet process \\(pid {os.getpid()}\\)"):
            with folder_lock(str(tmp_path)):
                pass
    with folder_lock(str(tmp_path)):          # released
        pass


def test_two_processes_training_into_one_folder(tmp_path):
    import subprocess
    import sys
    import time
    mnist_or_skip()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "codanet", "train", "fashion_mnist_demo", "--out", str(out), *TINY[:-1],
           "--set", "max_train_images=2000", "--set", "epochs=5", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (out / ".lock").exists() and (out / ".lock").read_text().strip():
                break
            time.sleep(0.1)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("argv,needle", [
    (["pixel-removal", "CKPT", "--steps", "1000000000"], "--steps must lie in"),
    (["localisation", "CKPT", "--grids", "1000000000"], "--grids must lie in"),
    (["localisation", "CKPT", "--grid-size", "4"], "needs 16 distinct classes"),
    (["localisation", "CKPT", "--json", "DIR"], "is a folder"),
])
def test_evaluation_sizes_are_checked_before_work(good, tmp_path, capsys, argv, needle):
    mnist_or_skip()
    path, _, _ = good
    argv = [a.replace("CKPT", path).replace("DIR", str(tmp_path)) for a in argv]
    rc, err = run_cli(["evaluate", *argv], capsys)
    one_line_error(rc, err, needle)


def test_gzip_bomb_idx_is_refused_without_inflating(tmp_path):
    import gzip

    from codanet.data import read_idx
    header = bytes([0, 0, 0x08, 3]) + (200_000).to_bytes(4, "big") + (100).to_bytes(4, "big") + (100).to_bytes(4, "big")
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header)
        for _ in range(20):
            f.write(bytes(50_000_000))        # 1 GB of zeros: a few MB compressed
    with pytest.raises(ValueError, match="limit"):
        read_idx(path)
    small = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big")
    with gzip.open(tmp_path / "long.gz", "wb") as f:
        f.write(small + bytes(10) + bytes(10_000_000))       # declares 10 bytes, holds 10 MB
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "long.gz")


def test_every_atomic_write_reports_a_full_disk_and_keeps_the_old_file(tmp_path):
    """summary.json, logs, figures and reports all go through atomic_path."""
    import errno

    from codanet.utils.io import atomic_path, write_json
    path = tmp_path / "summary.json"
    write_json(path, {"old": 1})
    with pytest.raises(OSError, match="no space left in .*summary.json needs about"):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["summary.json"]


def test_sixteen_bit_pngs_in_data_folders_are_scaled(tmp_path):
    import numpy as np
    from PIL import Image

    from codanet.data.images import load_image
    a = np.full((32, 32), 32768, dtype=np.uint16)            # mid-grey in 16 bits
    Image.fromarray(a).save(tmp_path / "g16.png")
    x = load_image(str(tmp_path / "g16.png"), 32)
    assert x.shape == (3, 32, 32) and abs(int(x.float().mean()) - 128) <= 1
