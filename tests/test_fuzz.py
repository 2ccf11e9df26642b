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
@given(st.lists(st.tuples(_keys, _values), max_size=4),
       st.sampled_from(["mnist_5k", "cifar10_s_sq_T1000", "nope.json"]))
def test_cli_train_arguments(monkeypatch, pairs, config):
    from codanet import train as train_pkg
    monkeypatch.setattr(train_pkg, "train", lambda cfg, out, **kw: {"stopped_by": None, "test_accuracy": 0.0,
                                                                    "test_top5": 0.0, "epochs": 0, "train_seconds": 0})
    argv = ["train", config] + [f"--set={k}={v}" for k, v in pairs] + ["--out", tempfile.mkdtemp()]
    _run_cli(argv, None)


@SETTINGS
@given(st.lists(st.one_of(_words, st.sampled_from(["evaluate", "localisation", "pixel-removal", "report",
                                                    "--grids", "--grid-size", "-1", "0", "--methods", "CoDA,Foo",
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


# -- untrusted checkpoints, configs and --set values ----------------------------------------------
# A case may take at most 60 s (a hang fails it) and may not raise the process's peak memory by 2 GB.
HOSTILE = settings(max_examples=EXAMPLES, deadline=60_000, suppress_health_check=list(HealthCheck))
def _peak_rss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                          st.text(max_size=8), st.sampled_from([10**8, 10**6, -1, 0, 1e308, "10", "sq"]))
_json = st.recursive(_json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=12)


def _tiny_state_and_tensors():
    import json as _json_mod

    from safetensors import safe_open
    from safetensors.torch import load_file

    from codanet.train.checkpoint import save_checkpoint
    from conftest import tiny_model
    d = tempfile.mkdtemp()
    path = save_checkpoint(os.path.join(d, "c.safetensors"), tiny_model("coda_cpu"), None,
                           dict(config=dict(dataset="mnist_5k"), classes=[str(i) for i in range(10)]))
    with safe_open(path, framework="pt") as f:
        state = _json_mod.loads(f.metadata()["codanet"])
    return state, load_file(path)


_STATE, _TENSORS = None, None
_ARCH_KEYS = ["kernel_sizes", "strides", "paddings", "channels", "ranks", "in_channels", "num_classes",
              "nonlinearity", "temperature", "logit_bias", "name", "input_size"]


@HOSTILE
@given(st.lists(st.tuples(st.sampled_from(_ARCH_KEYS + ["config", "classes", "epoch", "history", "arch", "format"]),
                          st.one_of(st.just("__delete__"), _json)), min_size=1, max_size=3))
def test_checkpoint_metadata_mutations_never_crash(edits):
    """Changed types, huge numbers, missing keys in a checkpoint's metadata: loading ends in the
    model or a ValueError, never another exception or a large allocation."""
    import copy
    import json as _json_mod

    from safetensors.torch import save_file

    from codanet.train.checkpoint import load_model
    global _STATE, _TENSORS
    if _STATE is None:
        _STATE, _TENSORS = _tiny_state_and_tensors()
    state, before = copy.deepcopy(_STATE), _peak_rss_bytes()
    for key, value in edits:
        target = state if key in ("config", "classes", "epoch", "history", "arch", "format") else state.get("arch")
        if not isinstance(target, dict):
            continue
        if value == "__delete__":
            target.pop(key, None)
        else:
            target[key] = value
    path = _with_file(b"", ".safetensors")
    try:
        text = _json_mod.dumps(state)
    except (ValueError, TypeError):
        return
    save_file(_TENSORS, path, metadata={"codanet": text})
    try:
        load_model(path)
    except ValueError:
        pass
    finally:
        os.remove(path)
    assert _peak_rss_bytes() - before < 2 * 2**30


@HOSTILE
@given(st.one_of(_json, st.dictionaries(st.sampled_from(["epochs", "lr", "model", "rank", "run_name", "batch_size",
                                                          "threads", "max_train_images", "_comment", "x"]),
                                        _json_scalars, max_size=6)),
       st.sampled_from(["", "dup", "deep"]))
def test_config_files_never_crash(data, twist):
    import json as _json_mod

    from codanet.train import load_config_file, make_config
    try:
        text = _json_mod.dumps(data)
    except (ValueError, TypeError):
        return
    if twist == "dup" and text.startswith("{") and len(text) > 2:
        text = '{"epochs": 1, "epochs": 2, ' + text[1:]
    if twist == "deep":
        text = "[" * 50_000 + text + "]" * 50_000
    path = _with_file(text.encode(), ".json")
    try:
        make_config(base=load_config_file(path))
    except ValueError:
        pass
    finally:
        os.remove(path)


_EXTREMES = ["0", "-1", "1", "2", "9223372036854775807", "1e308", "-1e308", "1e-320", "Infinity", "NaN",
             "null", "true", "false", '""', '"x"', "[]", "{}", "[1,2]", "x" * 300, "0.5", "3", "100000"]


@HOSTILE
@given(st.data())
def test_every_set_key_across_its_extremes(data):
    """Every config key with extreme values: a valid config within the documented ranges, or a
    ValueError -- never another exception."""
    from codanet.train import DEFAULTS, make_config, parse_set
    key = data.draw(st.sampled_from(sorted(DEFAULTS)))
    value = data.draw(st.sampled_from(_EXTREMES))
    from codanet.train.config import KEYS
    try:
        cfg = make_config(parse_set([f"{key}={value}"]))
    except ValueError:
        return
    if KEYS[key].high is not None and isinstance(cfg[key], (int, float)):
        assert cfg[key] <= KEYS[key].high
