"""Training configuration: plain data (JSON files under configs/), overridable with --set key=value.

Every key is declared once in KEYS (default, help text, accepted values); unknown keys and bad
values are rejected with a message that says what is valid.  A JSON config may name a `base`
config and override a few of its keys.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One config key: its default, its help text and the values it accepts."""
    default: Any
    help: str
    kind: str = "any"               # int, float, bool, str, path, name, choice, layers
    low: float | None = None        # smallest allowed value (int/float)
    high: float | None = None       # largest allowed value (int/float)
    optional: bool = False          # null allowed
    choices: tuple = ()
    above_low: bool = False         # float: strictly greater than `low`

    def expected(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind in ("int", "float"):
            if self.kind == "int":
                text = "a positive integer" if self.low == 1 else f"an integer >= {self.low:g}"
            else:
                text = f"a number {'>' if self.above_low else '>='} {self.low:g}"
            text += f" (at most {self.high:,})" if self.high is not None else ""
            return text + (" or null" if self.optional else "")
        return dict(bool="true or false", str="a non-empty string", path="a path or null",
                    layers="all, last or a number of layers (1-1000)",
                    name="a folder name of letters, digits, '-', '_' and '.' (at most 100; no '/', no '..'), "
                         "used as runs/<name> when --out is not given").get(self.kind, "a value")

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional or self.kind == "path" or (self.kind == "any" and self.default is None)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "int" and not (number and isinstance(value, int)):
            return False
        if self.kind == "float" and not (number and math.isfinite(value)):
            return False
        if self.kind in ("int", "float"):
            low_ok = self.low is None or (value > self.low if self.above_low else value >= self.low)
            return low_ok and (self.high is None or value <= self.high)
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind in ("str", "path"):
            return isinstance(value, str) and bool(value)
        if self.kind == "name":
            return (isinstance(value, str) and value not in (".", "..") and 0 < len(value) <= 100
                    and all(ch.isalnum() or ch in "-_." for ch in value))
        if self.kind == "layers":
            return value in ("all", "last") or (isinstance(value, int) and not isinstance(value, bool)
                                                and 1 <= value <= 1_000)
        return True


def _int(default, help, low=1, high=None, optional=False):
    return Key(default, help, "int", low, high, optional)


def _float(default, help, low=0.0, high=None, optional=False, above_low=False):
    return Key(default, help, "float", low, high, optional, above_low=above_low)


def _positive(default, help, high, optional=False):
    return _float(default, help, 0.0, high, optional, above_low=True)


_THREADS = 4 * (os.cpu_count() or 1)

# Every key of a training config, once: default, help, accepted values (docs/training.md).
KEYS: dict[str, Key] = dict(
    run_name=Key("run", "the run's name: its folder under runs/ when --out is not given", "name"),
    model=Key("coda_cpu", "registered model name (codanet models)", "str"),
    nonlinearity=Key("sq", "sq or l2 (eq. 2)", "choice", choices=("sq", "l2")),
    temperature=_positive(None, "T of eq. 9 (null: the model's default)", 1e12, optional=True),
    rank=_int(None, "int f (rank pattern) or null", high=4_096, optional=True),
    dataset=Key("fashion_mnist", "fashion_mnist, mnist, mnist_5k, cifar10, tiny_imagenet, imagenet100, "
                "imagenet, folder (data_dir/<class>/*.png)", "str"),
    data_dir=Key(None, "dataset folder (null: the dataset's default)", "path"),
    test_fraction=_positive(0.2, "dataset=folder without train/ and test/: the share of each class held out for "
                            "testing (seeded)", 0.9),
    skip_bad_files=Key(False, "dataset=folder: list and skip unreadable images instead of stopping", "bool"),
    max_train_images=_int(None, "use only the first N training images (null: all)", high=10**8, optional=True),
    max_test_images=_int(None, "evaluate on the first N test images (null: all)", high=10**8, optional=True),
    epochs=_int(3, "number of epochs", high=10_000),
    batch_size=_int(64, "images per step", high=65_536),
    accumulate=_int(1, "steps per optimiser update", high=1_024),
    optimizer=Key("adam", "adam (the paper's) or sgd", "choice", choices=("adam", "sgd")),
    momentum=_float(0.0, "SGD momentum", high=0.999),
    lr=_positive(1e-3, "base learning rate", 10.0),
    schedule=Key("constant", "constant | step (lr*gamma^floor(epoch/lr_step_epochs)) | warmup (linear from "
                 "warmup_start_lr to lr over warmup_epochs, then step) | linear (to lr*final_lr_fraction)",
                 "choice", choices=("constant", "step", "warmup", "linear")),
    lr_step_epochs=_int(30, "epochs per step of the step schedule", high=100_000),
    lr_gamma=_positive(1 / 1.5, "factor per step", 10.0),
    warmup_epochs=_float(0, "epochs of linear warm-up", high=10_000),
    warmup_start_lr=_positive(2.5e-4, "lr at the start of warm-up", 10.0),
    final_lr_fraction=_positive(0.05, "last lr of the linear schedule, as a fraction of lr", 1.0),
    lam=_float(0.0, "lambda of eq. 10 (0: off)", high=1_000.0),
    augment=Key("none", "none | crop_flip | randaugment", "choice", choices=("none", "crop_flip", "randaugment")),
    crop_padding=_float(4, "zero padding of the random crop", high=64),
    randaugment_n=_int(2, "RandAugment ops per image", high=14),
    randaugment_m=_float(10.0, "RandAugment magnitude (0-30)", high=30),
    seed=_int(0, "random seed (everything random derives from it)", low=0, high=2**63 - 1),
    device=Key("auto", "auto | cpu | cuda", "choice", choices=("auto", "cpu", "cuda")),
    bf16=Key(True, "bf16 autocast on CUDA", "bool"),
    threads=_int(None, f"CPU threads (null: torch default; at most {_THREADS}, 4x the cores)", high=_THREADS,
                 optional=True),
    compile=Key(False, "torch.compile the model (first steps slower while it compiles; docs/training.md)", "bool"),
    prefetch=Key("auto", "auto (data in memory: none; image files: a thread on CPU, processes on GPU) | none | "
                 "thread (build the next batches while a step runs) | processes (data_workers processes)",
                 "choice", choices=("auto", "none", "thread", "processes")),
    data_workers=_int(2, "worker processes when prefetch=processes", high=64),
    checkpoint_every_steps=_int(500, "optimiser updates between checkpoints", high=10**9),
    keep_checkpoints=_int(3, "how many recent checkpoints to keep", high=1_000),
    eval_batch_size=_int(500, "test batch size", high=65_536),
    max_minutes=_positive(None, "stop training after this many minutes (null: no limit)", 1e7, optional=True),
    init_from=Key(None, "start from these weights: shipped ('coda_cpu:fashion_mnist') or a checkpoint; a new "
                  "class layer when the class count differs (CLI: --from; docs/finetuning.md)", "path"),
    train_layers=Key("all", "all | last | N: the DAU layers trained during the first freeze_epochs epochs",
                     "layers"),
    freeze_epochs=_int(None, "epochs during which only train_layers train (null: the whole run)", high=10_000,
                       optional=True),
)

DEFAULTS: dict = {k: key.default for k, key in KEYS.items()}


def _check(key: str, value):
    if not KEYS[key].accepts(value):
        raise ValueError(f"config key {key!r}: expected {KEYS[key].expected()}, got {value!r}")
    return value


def _unknown(keys) -> str:
    return (f"unknown config key(s) {', '.join(sorted(keys))}; valid keys: "
            f"{', '.join(sorted(DEFAULTS))}")


def describe_keys() -> str:
    """Every key with its default and help (the epilog of `codanet train --help`)."""
    return "\n".join(f"  {k} = {json.dumps(key.default)}: {key.help}" for k, key in KEYS.items())


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


def load_config_file(path: str, _seen: tuple = ()) -> dict:
    """A JSON config file, or the name of a shipped one (e.g. 'cifar10_s_sq_T1000').  A `base` key
    names another config (a shipped name, or a path relative to this file) whose keys this one
    overrides."""
    if not os.path.exists(path) and os.path.isfile(os.path.join(CONFIG_DIR, path + ".json")):
        path = os.path.join(CONFIG_DIR, path + ".json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} not found; shipped configs: {', '.join(shipped_configs())}")
    data = _read_json_object(path)
    data.pop("_comment", None)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ValueError(f"config file {path}: 'base' must name a config, got {base!r}")
    if os.path.realpath(path) in _seen or len(_seen) > 8:
        raise ValueError(f"config file {path}: its 'base' chain loops or is deeper than 8")
    relative = os.path.join(os.path.dirname(path), base)
    base_path = relative if os.path.isfile(relative) else base
    return {**load_config_file(base_path, _seen + (os.path.realpath(path),)), **data}


def _read_json_object(path: str) -> dict:
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
