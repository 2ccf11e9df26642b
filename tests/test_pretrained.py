"""Shipped weights: loading, integrity, the card's accuracy, and explanations of real clips."""
import json
import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch

import codanet
from codanet.cli import main
from codanet.models.pretrained import WEIGHTS_DIR, available_weights, load_pretrained, model_card

SHIPPED = [("coda_cpu", "fashion_mnist"), ("coda_cpu", "fashion_mnist_20ep"), ("coda_cpu", "mnist_5k")]


def dataset_or_skip(name):
    from codanet.data import load_dataset
    try:
        return load_dataset(name, "test", None)
    except (FileNotFoundError, ValueError, ImportError) as e:
        pytest.skip(f"{name} not available here ({e}); `make setup` installs it")


@pytest.mark.parametrize("model,weights", SHIPPED)
def test_shipped_weights_are_listed_small_and_load(model, weights):
    assert weights in available_weights()[model]
    card = model_card(model, weights)
    assert card["file_bytes"] == os.path.getsize(os.path.join(WEIGHTS_DIR, card["file"]))
    m = codanet.create_model(model, pretrained=weights)
    assert not m.training and m.class_names == card["classes"] and m.temperature == card["temperature"]
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_weights_in_the_repo_stay_small():
    total = sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in os.listdir(WEIGHTS_DIR))
    assert total <= 20e6


def test_unknown_weights_and_clashing_arguments_are_clear():
    with pytest.raises(ValueError, match="available: .*coda_cpu:fashion_mnist"):
        codanet.create_model("coda_cpu", pretrained="imagenet")
    with pytest.raises(ValueError, match="num_classes=5"):
        codanet.create_model("coda_cpu", pretrained="fashion_mnist", num_classes=5)


def test_a_damaged_weights_file_is_refused(tmp_path):
    for f in os.listdir(WEIGHTS_DIR):
        shutil.copy(os.path.join(WEIGHTS_DIR, f), tmp_path / f)
    card = model_card("coda_cpu", "fashion_mnist")
    data = bytearray((tmp_path / card["file"]).read_bytes())
    data[-100] ^= 1                                          # one bit of one weight
    (tmp_path / card["file"]).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_pretrained("coda_cpu", "fashion_mnist", directory=str(tmp_path))
    assert load_pretrained("coda_cpu", "mnist_5k", directory=str(tmp_path))[0].num_classes == 10


def test_torch_hub_loads_the_shipped_weights():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    m = torch.hub.load(repo, "coda_cpu", source="local", pretrained="fashion_mnist")
    ref = codanet.create_model("coda_cpu", pretrained="fashion_mnist")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))


def test_models_command_lists_the_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "coda_cpu:fashion_mnist" in out and "coda_cpu:mnist_5k" in out


@pytest.mark.parametrize("model,weights", SHIPPED)
def test_shipped_weights_reach_their_cards_accuracy(model, weights):
    """On the card's fixed subset (the first 1,000 test images); the full figure: `codanet
    evaluate coda_cpu:<weights>`."""
    from codanet.train import evaluate_accuracy
    card = model_card(model, weights)
    test = dataset_or_skip(card["dataset"])
    m = codanet.create_model(model, pretrained=weights)
    acc = evaluate_accuracy(m, test.subset(range(card["subset_images"])))["top1"]
    assert abs(acc - card["subset_top1"]) <= 0.002         # 2 images of 1,000: other CPUs round differently


def moving_item_clip(path, item: np.ndarray, size=64, frames=30):
    """A 28x28 item moving across a black size x size canvas; returns the item's centres (row, col)."""
    from codanet.explain.inputs import VideoWriter
    writer = VideoWriter(str(path), Fraction(10), size, size)
    centres = []
    for t in range(frames):
        top = round(2 + (size - 32) * t / (frames - 1))
        left = round(2 + (size - 32) * (t % 10) / 9)
        canvas = np.zeros((size, size), np.uint8)
        canvas[top:top + 28, left:left + 28] = item
        writer.write(np.repeat(canvas[:, :, None], 3, -1))
        centres.append((top + 13.5, left + 13.5))
    writer.close()
    return centres


def test_video_contributions_follow_a_moving_item(tmp_path):
    """The centre of mass of the positive contributions for the item's class stays within 8 pixels
    of the item in >= 90 % of the frames of a generated clip (Fashion-MNIST test items moving on a
    64x64 black canvas, explained at the canvas's own size)."""
    pytest.importorskip("av")
    test = dataset_or_skip("fashion_mnist")
    hits = []
    for index in (0, 1, 2):                                  # ankle boot, pullover, trouser
        clip = tmp_path / f"moving{index}.mp4"
        centres = moving_item_clip(clip, test.images[index, 0].numpy())
        out = tmp_path / f"out{index}"
        name = test.classes[int(test.labels[index])]
        assert main(["explain", str(clip), "--model", "coda_cpu:fashion_mnist", "--resize", "none",
                     "--target", name, "--out", str(out), "--quiet"]) == 0
        frames = json.loads((out / f"moving{index}_frames.json").read_text())["frames"]
        assert len(frames) == len(centres)
        for f, (row, col) in zip(frames, centres):
            c = f["positive_centre"]
            hits.append(c is not None and np.hypot(c[0] + 0.5 - row - 0.5, c[1] + 0.5 - col - 0.5) <= 8)
            assert abs(f["check"]) < 1e-3
    assert np.mean(hits) >= 0.9, np.mean(hits)


def test_explain_a_png_with_the_shipped_model(tmp_path):
    from PIL import Image
    test = dataset_or_skip("fashion_mnist")
    Image.fromarray(test.images[1, 0].numpy()).save(tmp_path / "item.png")
    assert main(["explain", str(tmp_path / "item.png"), "--model", "coda_cpu:fashion_mnist",
                 "--out", str(tmp_path / "out"), "--top", "3"]) == 0
    rec = json.loads((tmp_path / "out" / "explanations.json").read_text())["inputs"][0]
    assert rec["prediction_name"] == test.classes[int(test.labels[1])]
    assert os.path.isfile(rec["figure"]) and len(rec["explained"]) == 3


def test_demo_starts_with_explanations_of_the_shipped_model(tmp_path):
    from codanet.demo import explain_with_shipped_model
    dataset_or_skip("fashion_mnist")
    path = explain_with_shipped_model(str(tmp_path))
    assert path and os.path.getsize(path) > 10_000
