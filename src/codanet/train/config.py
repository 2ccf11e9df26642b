"""Training configuration: plain data (JSON files under configs/), overridable with --set key=value.

Every key, its type and meaning is in DEFAULTS / HELP; unknown keys and bad values are rejected
with a message that lists what is valid.
"""
from __future__ import annotations

import json
import math
import os

DEFAULTS: dict = dict(
    name="run",
    model="coda_cpu", nonlinearity="sq", temperature=None, rank=None,
    dataset="fashion_mnist", data_dir=None, max_train_images=None, max_test_images=None,
    epochs=3, batch_size=64, accumulate=1,
    optimizer="adam", momentum=0.0, lr=1e-3, schedule="constant", lr_step_epochs=30, lr_gamma=1 / 1.5,
    warmup_epochs=0, warmup_start_lr=2.5e-4, final_lr_fraction=0.05,
    lam=0.0,
    augment="none", crop_padding=4, randaugment_n=2, randaugment_m=10.0,
    seed=0, device="auto", bf16=True, threads=None, compile=False, prefetch="auto", data_workers=2,
    checkpoint_every_steps=500, keep_checkpoints=3, eval_batch_size=500,
    max_minutes=None,
)

HELP = dict(
    name="run name (folder name under runs/ when --out is not given)",
    model="registered model name (codanet models)", nonlinearity="sq or l2 (eq. 2)",
    temperature="T of eq. 9 (null: the model's default)", rank="int f (rank pattern) or null",
    dataset="fashion_mnist, mnist, mnist_5k, cifar10, tiny_imagenet, imagenet100, imagenet",
    data_dir="dataset folder (null: the dataset's default)",
    max_train_images="use only the first N training images (null: all)",
    max_test_images="evaluate on the first N test images (null: all)",
    epochs="number of epochs", batch_size="images per step", accumulate="steps per optimiser update",
    optimizer="adam (the paper's) or sgd", momentum="SGD momentum", lr="base learning rate",
    schedule="constant | step (lr*gamma^floor(epoch/lr_step_epochs)) | warmup (linear from "
             "warmup_start_lr to lr over warmup_epochs, then step) | linear (to lr*final_lr_fraction)",
    lr_step_epochs="epochs per step of the step schedule", lr_gamma="factor per step",
    warmup_epochs="epochs of linear warm-up", warmup_start_lr="lr at the start of warm-up",
    final_lr_fraction="last lr of the linear schedule, as a fraction of lr",
    lam="lambda of eq. 10 (0: off)",
    augment="none | crop_flip | randaugment", crop_padding="zero padding of the random crop",
    randaugment_n="RandAugment ops per image", randaugment_m="RandAugment magnitude (0-30)",
    seed="random seed (everything random derives from it)", device="auto | cpu | cuda",
    bf16="bf16 autocast on CUDA", threads="CPU threads (null: torch default)",
    compile="torch.compile the model (first steps slower while it compiles; see the README)",
    prefetch="auto (in memory: none; image files: thread on CPU, processes on GPU) | none | thread "
             "(build the next batches while a step runs) | processes (data_workers worker processes)",
    data_workers="worker processes when prefetch=processes",
    checkpoint_every_steps="optimiser updates between checkpoints",
    keep_checkpoints="how many recent checkpoints to keep", eval_batch_size="test batch size",
    max_minutes="stop training after this many minutes (null: no limit)",
)

_CHOICES = dict(nonlinearity=("sq", "l2"), optimizer=("adam", "sgd"), device=("auto", "cpu", "cuda"),
                schedule=("constant", "step", "warmup", "linear"),
                augment=("none", "crop_flip", "randaugment"), prefetch=("auto", "none", "thread", "processes"))
_POSITIVE_INT = ("epochs", "batch_size", "accumulate", "lr_step_epochs", "checkpoint_every_steps",
                 "keep_checkpoints", "eval_batch_size", "randaugment_n", "data_workers")
_OPTIONAL_POSITIVE_INT = ("max_train_images", "max_test_images", "threads", "rank")
_NONNEG_FLOAT = ("momentum", "lam", "warmup_epochs", "crop_padding", "randaugment_m")
_POSITIVE_FLOAT = ("lr", "lr_gamma", "warmup_start_lr", "final_lr_fraction")
_OPTIONAL_POSITIVE_FLOAT = ("temperature", "max_minutes")


# Sane upper bounds of the numeric keys, checked before any work (the lower bounds are above).
RANGES: dict = dict(
    epochs=10_000, batch_size=65_536, accumulate=1_024, lr_step_epochs=100_000, checkpoint_every_steps=10**9,
    keep_checkpoints=1_000, eval_batch_size=65_536, randaugment_n=14, data_workers=64,
    max_train_images=100_000_000, max_test_images=100_000_000, threads=4 * (os.cpu_count() or 1), rank=4_096,
    momentum=0.999, lam=1_000.0, warmup_epochs=10_000, crop_padding=64, randaugment_m=30,
    lr=10.0, lr_gamma=10.0, warmup_start_lr=10.0, final_lr_fraction=1.0, temperature=1e12, max_minutes=1e7,
    seed=2**63 - 1,
)


def _check(key: str, value):
    def bad(expected):
        raise ValueError(f"config key {key!r}: expected {expected}, got {value!r}")
    isnum = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in _CHOICES and value not in _CHOICES[key]:
        bad("one of " + ", ".join(_CHOICES[key]))
    if key in _POSITIVE_INT and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        bad("a positive integer")
    if key in _OPTIONAL_POSITIVE_INT and value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and value > 0):
        bad("a positive integer or null")
    if key in _NONNEG_FLOAT and not (isnum and math.isfinite(value) and value >= 0):
        bad("a number >= 0")
    if key in _POSITIVE_FLOAT and not (isnum and math.isfinite(value) and value > 0):
        bad("a number > 0")
    if key in _OPTIONAL_POSITIVE_FLOAT and value is not None and not (isnum and math.isfinite(value) and value > 0):
        bad("a number > 0 or null")
    if key in ("bf16", "compile") and not isinstance(value, bool):
        bad("true or false")
    if key in ("name", "model", "dataset") and not (isinstance(value, str) and value):
        bad("a non-empty string")
    if key == "name" and (value in (".", "..") or len(value) > 100 or not all(
            ch.isalnum() or ch in "-_." for ch in value)):
        bad("a folder name of letters, digits, '-', '_' and '.' (at most 100; no '/', no '..'), "
            "used as runs/<name> when --out is not given")
    if key == "data_dir" and value is not None and not isinstance(value, str):
        bad("a path or null")
    if key == "seed" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        bad("an integer >= 0")
    if key in RANGES and value is not None and value > RANGES[key]:
        bad(f"at most {RANGES[key]:,}" + (f" (4x the {os.cpu_count()} cores)" if key == "threads" else ""))
    return value


def _unknown(keys) -> str:
    return (f"unknown config key(s) {', '.join(sorted(keys))}; valid keys: "
            f"{', '.join(sorted(DEFAULTS))}")


def make_config(overrides: dict | None = None, base: dict | None = None) -> dict:
    """DEFAULTS <- base <- overrides, every key checked."""
    cfg = dict(DEFAULTS)
    for source in (base or {}), (overrides or {}):
        unknown = set(source) - set(DEFAULTS)
        if unknown:
            raise ValueError(_unknown(unknown))
        for k, v in source.items():
            cfg[k] = _check(k, v)
    from ..models import list_models
    if cfg["model"] not in list_models():
        raise ValueError(f"config key 'model': unknown model {cfg['model']!r}; available: {', '.join(list_models())}")
    from ..data import DATASETS
    if cfg["dataset"] not in DATASETS:
        raise ValueError(f"config key 'dataset': unknown dataset {cfg['dataset']!r}; available: "
                         f"{', '.join(sorted(DATASETS))}")
    return cfg


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


MAX_CONFIG_BYTES = 1_000_000


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise _DuplicateKey(k)
    return dict(pairs)


def load_config_file(path: str) -> dict:
    """A JSON config file, or the name of a shipped one (e.g. 'cifar10_s_sq_T1000')."""
    if not os.path.exists(path) and os.path.isfile(os.path.join(CONFIG_DIR, path + ".json")):
        path = os.path.join(CONFIG_DIR, path + ".json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} not found; shipped configs: {', '.join(shipped_configs())}")
    if os.path.isdir(path):
        raise ValueError(f"config {path} is a directory, expected a JSON file")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path} is {os.path.getsize(path):,} bytes; a config is at most "
                         f"{MAX_CONFIG_BYTES:,}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"config file {path} is nested too deeply; a config is a flat JSON object") from None
    except _DuplicateKey as e:
        raise ValueError(f"config file {path} names key {e.args[0]!r} twice; each key may appear once") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    data.pop("_comment", None)
    return data


def parse_set(items: list[str]) -> dict:
    """--set key=value (value parsed as JSON when it can be: 3, 1e-3, true, null, "x")."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in DEFAULTS:
            raise ValueError(_unknown([key]))
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(DEFAULTS[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out
