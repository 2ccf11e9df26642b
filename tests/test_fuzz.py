"""Property-based tests: generated CLI arguments, image files and IDX files end in success or a
clean error -- never a traceback.  `make fuzz` runs them with many more examples."""
import contextlib
import io
import os
import struct
import tempfile

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codanet import cli
from codanet.data import read_idx
from codanet.data.images import load_image

EXAMPLES = int(os.environ.get("CODANET_FUZZ_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
CLEAN = (ValueError, FileNotFoundError)


def _run_cli(argv, monkeypatch_train):
    """Run the CLI in-process; returns the exit code, asserting no traceback was printed."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:                        # argparse: usage errors exit 2
            code = e.code
    assert "Traceback" not in err.getvalue()
    if code not in (0, None):
        assert code == 2 and err.getvalue().strip(), argv
    return code


_words = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_keys = st.sampled_from(["epochs", "lr", "batch_size", "temperature", "augment", "model", "dataset", "seed",
                         "lam", "rank", "schedule", "max_minutes", "nope", "threads", "crop_padding", ""])
_values = st.one_of(_words, st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(str),
                    st.sampled_from(["null", "true", "[1]", "{}", "-1", "0", "1e-3", "crop_flip", "coda_s"]))


@SETTINGS
@given(st.lists(st.tuples(_keys, _values), max_size=4), st.sampled_from(["mnist_5k", "cifar10_s_sq_T1000", "nope.json"]))
def test_cli_train_arguments(monkeypatch, pairs, config):
    from codanet import train as train_pkg
    monkeypatch.setattr(train_pkg, "train", lambda cfg, out, **kw: {"stopped_by": None, "test_accuracy": 0.0,
                                                                    "test_top5": 0.0, "epochs": 0, "train_seconds": 0})
    argv = ["train", config] + [f"--set={k}={v}" for k, v in pairs] + ["--out", tempfile.mkdtemp()]
    _run_cli(argv, None)


@SETTINGS
@given(st.lists(st.one_of(_words, st.sampled_from(["evaluate", "localisation", "pixel-removal", "report",
                                                    "--grids", "--n", "-1", "0", "--methods", "CoDA,Foo",
                                                    "experiment", "eigenvectors", "--digits", "bench"])),
                max_size=5))
def test_cli_arbitrary_arguments(argv):
    if argv[:1] in (["bench"], ["demo"], ["experiment"]):
        return                                        # may be valid long-running commands: not fuzzed
    _run_cli(argv, None)


def _with_file(data: bytes, suffix: str):
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@SETTINGS
@given(st.binary(max_size=2000))
def test_image_reader_on_random_bytes(data):
    path = _with_file(data, ".png")
    try:
        x = load_image(path, 32)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    except CLEAN:
        pass
    finally:
        os.remove(path)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "CMYK"]),
       st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]), st.integers(0, 200))
def test_image_reader_on_real_images_and_truncations(w, h, mode, fmt, cut):
    from PIL import Image
    img = Image.fromarray(np.random.RandomState(w * h).randint(0, 255, (h, w, 3), dtype=np.uint8)).convert(
        "RGB" if mode in ("I;16",) else mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return                                            # PIL cannot write this mode in this format
    data = buf.getvalue()
    data = data[:max(0, len(data) - cut)] if cut else data
    path = _with_file(data, "." + fmt.lower())
    try:
        x = load_image(path, 16)
        assert x.shape == (3, 16, 16)
    except CLEAN:
        pass
    finally:
        os.remove(path)


@SETTINGS
@given(st.binary(max_size=300), st.booleans())
def test_idx_reader_on_random_bytes(data, gz):
    import gzip
    path = _with_file(gzip.compress(data) if gz else data, ".gz" if gz else "")
    try:
        read_idx(path)
    except CLEAN:
        pass
    finally:
        os.remove(path)


@SETTINGS
@given(st.lists(st.integers(0, 7), min_size=1, max_size=3), st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
       st.integers(-3, 3))
def test_idx_reader_on_near_valid_headers(shape, code, extra):
    size = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    body = b"\x01" * max(0, int(np.prod(shape)) * size + extra)
    extra = len(body) - int(np.prod(shape)) * size             # what was really added or cut
    data = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + body
    path = _with_file(data, "")
    try:
        arr = read_idx(path)
        assert arr.shape == tuple(shape) and extra == 0 and code != 0x07
    except CLEAN:
        assert extra != 0 or code == 0x07
    finally:
        os.remove(path)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.float16]),
       st.floats(-2, 2), st.booleans())
def test_model_input_validation(n, c, h, w, dtype, offset, nan):
    from conftest import tiny_model
    model = _MODEL.setdefault("m", tiny_model("coda_cpu"))
    x = (torch.rand(n, c, h, w) + offset).to(dtype)
    if nan and x.is_floating_point():
        x[0, 0, 0, 0] = float("nan")
    try:
        out = model(x)
        assert out.shape == (n, 10) and torch.isfinite(out).all()
    except ValueError as e:
        assert "expected a float tensor of shape (N, 1, H, W)" in str(e)


_MODEL = {}
