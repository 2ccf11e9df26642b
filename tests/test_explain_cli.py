"""`codanet explain` on images, folders and videos, with every kind of bad input."""
import json
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from codanet.cli import main
from codanet.explain.inputs import VideoReader, VideoWriter, read_image, to_model_input
from codanet.train.checkpoint import save_checkpoint
from conftest import tiny_model

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("av")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    model = tiny_model("coda_cpu", num_classes=4)
    save_checkpoint(str(path), model, None, dict(classes=["cat", "dog", "fox", "owl"]))
    return str(path)


def write_clip(path, frames, fps=10):
    w = VideoWriter(str(path), Fraction(fps), frames[0].shape[1], frames[0].shape[0])
    for f in frames:
        w.write(f)
    w.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image = PIL
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(d / "colour.png")
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(d / "grey.bmp")
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(d / "photo.jpg")
    Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8)).convert("P").save(d / "palette.png")
    Image.fromarray((rng.random((28, 28, 4)) * 255).astype(np.uint8)).convert("CMYK").save(d / "cmyk.tiff")
    Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8)).save(d / "web.webp")
    frames = [Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)) for _ in range(3)]
    frames[0].save(d / "animated.png", save_all=True, append_images=frames[1:])
    frames[0].save(d / "clip.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    write_clip(d / "clip.mp4", [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(45)], fps=15)
    (d / "notes.png").write_bytes(b"this is not an image")
    (d / "truncated.jpg").write_bytes((d / "photo.jpg").read_bytes()[:300])
    (d / "empty_video.mp4").write_bytes(b"")
    (d / "empty").mkdir()
    return d


def test_sixteen_bit_png_is_scaled_not_white(tmp_path):
    a = (np.linspace(0, 65535, 28 * 28).reshape(28, 28)).astype(np.uint16)
    PIL.fromarray(a).save(tmp_path / "g16.png")
    image, notes = read_image(str(tmp_path / "g16.png"))
    assert abs(float(image.mean()) - 0.5) < 0.01 and image.max() <= 1 and "16-bit" in notes[0]


def test_conversion_to_the_model_input():
    x, notes = to_model_input(np.random.rand(40, 60, 3).astype(np.float32), channels=1, size=28)
    assert x.shape == (1, 28, 28) and "grey" in notes[0] and "centre-cropped" in notes[1]
    x, _ = to_model_input(np.random.rand(20, 20, 1).astype(np.float32), channels=3, size=None, resize="none")
    assert x.shape == (3, 20, 20)


def test_explain_images_videos_and_bad_inputs(checkpoint, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    good = ["colour.png", "grey.bmp", "photo.jpg", "palette.png", "cmyk.tiff", "web.webp"]
    videos = ["animated.png", "clip.gif", "clip.mp4"]
    bad = ["notes.png", "truncated.jpg", "empty_video.mp4", "empty", "missing.png"]
    args = [str(inputs / f) for f in good + videos + bad]
    rc = main(["explain", *args, "--model", checkpoint, "--out", str(out), "--top", "2", "--quiet"])
    assert rc == 2                                           # some inputs failed, the others were done
    result = json.loads((out / "explanations.json").read_text())
    assert [os.path.basename(r["file"]) for r in result["inputs"]] == good + videos
    assert sorted(os.path.basename(e["file"]) for e in result["errors"]) == sorted(bad)
    err = capsys.readouterr().err
    assert err.count("error:") == len(bad) and "Traceback" not in err
    for rec in result["inputs"][:len(good)]:
        assert os.path.isfile(rec["figure"]) and len(rec["explained"]) == 2
        maps = np.load(rec["maps"])
        assert maps.shape == (2, 28, 28)
        for e, m in zip(rec["explained"], maps):               # exact: sums to logit - b0
            assert abs(e["check"]) < 1e-4 and abs(m.sum() - (e["logit"] - result["logit_bias"])) < 1e-3
        assert rec["top_k"][0]["name"] in ["cat", "dog", "fox", "owl"]
    clip = result["inputs"][-1]
    assert clip["frames"] == 45 and clip["fps"] == 15 and clip["max_abs_check"] < 1e-4
    reader = VideoReader(clip["video"])
    assert reader.fps == 15 and sum(1 for _ in reader) == 45
    reader.close()


@pytest.mark.parametrize("option,value,message", [
    ("--target", "zebra", "not a class name"),
    ("--layer", "12", "layer must be"),
    ("--top", "9", "--top must lie"),
])
def test_bad_options_exit_2_with_one_line(checkpoint, inputs, tmp_path, capsys, option, value, message):
    rc = main(["explain", str(inputs / "grey.bmp"), "--model", checkpoint, "--out", str(tmp_path), option, value])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_target_by_name_and_layer(checkpoint, inputs, tmp_path):
    rc = main(["explain", str(inputs / "grey.bmp"), "--model", checkpoint, "--out", str(tmp_path),
               "--target", "fox", "--layer", "3", "--quiet"])
    rec = json.loads((tmp_path / "explanations.json").read_text())["inputs"][0]
    assert rc == 0 and rec["explained"][0]["name"] == "fox" and rec["layer"] == 3
    assert np.load(rec["maps"]).shape == (1, 14, 14) and abs(rec["explained"][0]["check"]) < 1e-4
