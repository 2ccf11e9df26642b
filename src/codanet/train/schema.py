"""The schema of checkpoint metadata: what a file from someone else may claim, checked before
anything is built or allocated.

A checkpoint's JSON state names the architecture; a file that claims 10^8 classes or holds a
string where a count belongs is refused here with the field, the value and what is allowed, and
the model's tensor shapes are derived from the architecture so that `checkpoint.read_state` can
compare them with the shapes in the safetensors header (a model built from checked metadata can
never be larger than the file).
"""
from __future__ import annotations

import math
import os

MAX_LAYERS, MAX_KERNEL, MAX_STRIDE = 64, 63, 64
MAX_CHANNELS, MAX_RANK, MAX_CLASSES, MAX_IN_CHANNELS = 65_536, 65_536, 1_000_000, 1_024
LISTS = ("kernel_sizes", "strides", "paddings", "channels", "ranks")
ARCH_KEYS = set(LISTS) | {"in_channels", "num_classes", "nonlinearity", "temperature", "logit_bias",
                          "name", "input_size"}


def _int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def arch_problems(arch) -> list[str]:
    """Every way in which `arch` is not a valid architecture (empty: valid)."""
    if not isinstance(arch, dict):
        return [f"arch must be an object, got {type(arch).__name__}"]
    problems = [f"arch.{k}: missing" for k in sorted(ARCH_KEYS - set(arch))]
    problems += [f"arch.{k}: unknown key" for k in sorted(set(arch) - ARCH_KEYS)]
    bounds = dict(kernel_sizes=(1, MAX_KERNEL), strides=(1, MAX_STRIDE), paddings=(0, MAX_KERNEL),
                  channels=(1, MAX_CHANNELS), ranks=(1, MAX_RANK))
    lengths = set()
    for key, (low, high) in bounds.items():
        v = arch.get(key)
        if not (isinstance(v, list) and 1 <= len(v) <= MAX_LAYERS and all(_int(x, low, high) for x in v)):
            problems.append(f"arch.{key}: expected a list of 1-{MAX_LAYERS} integers in [{low}, {high}], got "
                            f"{str(v)[:80]}")
        else:
            lengths.add(len(v))
    if len(lengths) > 1:
        problems.append(f"arch: the per-layer lists have different lengths {sorted(lengths)}")
    for key, high in (("in_channels", MAX_IN_CHANNELS), ("num_classes", MAX_CLASSES)):
        if not _int(arch.get(key), 1, high):
            problems.append(f"arch.{key}: expected an integer in [1, {high}], got {arch.get(key)!r:.80}")
    if arch.get("nonlinearity") not in ("sq", "l2"):
        problems.append(f"arch.nonlinearity: expected 'sq' or 'l2', got {arch.get('nonlinearity')!r:.80}")
    if not (_number(arch.get("temperature")) and arch["temperature"] > 0):
        problems.append(f"arch.temperature: expected a positive finite number, got {arch.get('temperature')!r:.80}")
    if not _number(arch.get("logit_bias")):
        problems.append(f"arch.logit_bias: expected a finite number, got {arch.get('logit_bias')!r:.80}")
    if not isinstance(arch.get("name"), str):
        problems.append(f"arch.name: expected a string, got {arch.get('name')!r:.80}")
    if arch.get("input_size") is not None and not _int(arch.get("input_size"), 1, 100_000):
        problems.append("arch.input_size: expected null or an integer in [1, 100000], got "
                        f"{arch.get('input_size')!r:.80}")
    if not problems and arch["channels"][-1] != arch["num_classes"]:
        problems.append(f"arch: the last layer has {arch['channels'][-1]} channels but num_classes is "
                        f"{arch['num_classes']}")
    return problems


def state_problems(state: dict) -> list[str]:
    """Problems of the non-architecture fields that codanet reads."""
    problems = []
    config = state.get("config")
    if config is not None and not isinstance(config, dict):
        problems.append(f"config: expected an object, got {type(config).__name__}")
    elif config:
        for key in ("dataset", "data_dir", "run_name", "name", "model"):
            if config.get(key) is not None and not isinstance(config[key], str):
                problems.append(f"config.{key}: expected a string, got {config[key]!r:.80}")
    classes = state.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        problems.append(f"classes: expected a list of strings, got {str(classes)[:80]}")
    for key in ("epoch", "step"):
        if key in state and not _int(state[key], 0, 10**12):
            problems.append(f"{key}: expected an integer >= 0, got {state[key]!r:.80}")
    if "elapsed" in state and not (_number(state["elapsed"]) and state["elapsed"] >= 0):
        problems.append(f"elapsed: expected a number >= 0, got {state['elapsed']!r:.80}")
    if "history" in state and not (isinstance(state["history"], list)
                                   and all(isinstance(h, dict) for h in state["history"])):
        problems.append("history: expected a list of objects")
    groups = state.get("param_groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups)):
        problems.append("param_groups: expected a list of objects")
    return problems


def check_state(state: dict, path: str) -> None:
    """ValueError listing every problem of a checkpoint's metadata."""
    problems = arch_problems(state.get("arch")) + state_problems(state)
    if problems:
        raise ValueError(f"{path}: invalid checkpoint metadata: " + "; ".join(problems[:10])
                         + (" ..." if len(problems) > 10 else ""))


def expected_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """The model's state-dict shapes for a valid `arch` (DAUConv2d: A, B, b per layer)."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 2 * arch["in_channels"]
    for i, (k, c_out, r) in enumerate(zip(arch["kernel_sizes"], arch["channels"], arch["ranks"])):
        shapes[f"layers.{i}.B"] = (r, c_in, k, k)
        shapes[f"layers.{i}.A_T"] = (c_out, r, c_in, k, k)
        shapes[f"layers.{i}.b"] = (c_out, c_in, k, k)
        c_in = c_out
    return shapes


def training_memory_bytes(cfg: dict, batch: int, size: int) -> int:
    """A rough lower estimate of a training run's memory: weights, gradients and two Adam moments,
    plus the low-rank layer's per-position values (z', A'^T x, scales, output) for a batch, kept
    for the backward pass.  Used to refuse absurd sizes before anything is allocated."""
    channels = list(cfg["channels"][:-1]) + [cfg["num_classes"]]
    total, c_in, h = 0, 2 * cfg["in_channels"], size
    for k, s, p, c_out, r in zip(cfg["kernel_sizes"], cfg["strides"], cfg["paddings"], channels, cfg["ranks"]):
        total += 4 * 4 * c_in * k * k * (r + c_out * (r + 1))           # A, B, b: weights, grads, Adam
        h = max(1, (h + 2 * p - k) // s + 1)
        total += 4 * 2 * batch * h * h * (r + 1 + c_out * (r + 1) + 2 * c_out)
        c_in = c_out
    return total


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
