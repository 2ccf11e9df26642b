"""What the code promises its readers and users beyond the maths: PyTorch-style layer arguments,
one name per concept, no process-wide side effects on import, old checkpoints still load."""
import os
import subprocess
import sys

import pytest
import torch

import codanet
from codanet.cli import main
from codanet.train import KEYS, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rank_is_keyword_only_like_conv2d_arguments():
    layer = codanet.DAUConv2d(4, 6, 3, rank=2, stride=2)
    assert (layer.stride, layer.rank, layer.padding) == (2, 2, 1)
    with pytest.raises(TypeError):
        codanet.DAUConv2d(4, 6, 3, 2)                           # would read as stride 2 in nn.Conv2d
    with pytest.raises(TypeError):
        codanet.DAULinear(4, 6, 2)
    A, B, b = layer.paper_matrices()                            # A_T is stored, A is what the paper calls A
    assert A.shape == (6, 36, 2) and torch.equal(A[1, :, 0], layer.A_T[1, 0].flatten())


def test_rank_and_ranks_together_are_refused():
    with pytest.raises(ValueError, match="either rank .* or ranks"):
        codanet.create_model("coda_cpu", rank=4, ranks=[4] * 9)


def test_importing_codanet_leaves_the_plotting_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); "
            "import codanet, codanet.explain, codanet.report, codanet.evaluate.runner, "
            "codanet.experiments.study, codanet.evaluate.sanity, codanet.explain.explain_files; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_every_config_key_is_declared_once_with_help_and_a_valid_default():
    cfg = make_config({})
    assert set(cfg) == set(KEYS) and all(KEYS[k].help for k in KEYS)


def test_train_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {k} = " in out for k in KEYS)


def test_checkpoints_written_before_A_was_renamed_still_load(tmp_path):
    from safetensors.torch import load_file, save_file
    model = codanet.create_model("coda_cpu", num_classes=3, in_channels=1)
    path = str(tmp_path / "new.safetensors")
    codanet.train.save_checkpoint(path, model)
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    old = {k.replace(".A_T", ".A"): v for k, v in load_file(path).items()}
    save_file(old, str(tmp_path / "old.safetensors"), metadata=meta)
    loaded, _ = codanet.load_model(str(tmp_path / "old.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_the_repository_is_self_contained_and_the_readme_short():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    texts = [f for f in tracked if f.endswith((".py", ".md", ".json", ".toml", "Makefile"))]
    cited = [f for f in texts if "REFERENCE.md" in open(os.path.join(ROOT, f), encoding="utf-8").read()
             and f != "tests/test_codebase.py"]
    assert cited == []
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 150
    docs = set(os.listdir(os.path.join(ROOT, "docs")))
    assert {"maths.md", "evaluation.md", "benchmarks.md", "finetuning.md"} <= docs
