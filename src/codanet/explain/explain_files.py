"""`codanet explain`: contribution maps of users' images and videos, written as figures, JSON and
raw maps (docs/explain.md).

Per image: a figure (input, the maps of the chosen classes on one symmetric colour scale -- red
positive, blue negative -- and an overlay), the maps as <name>.npy (classes, H_l, W_l) float32,
and an entry in explanations.json with logits, probabilities, top-k and the check
sum(contributions) - (logit - b0).  Per video: <name>_explained.mp4 at the clip's frame rate with
the map beside each frame, and <name>_frames.json with each frame's prediction.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from .inputs import VideoReader, VideoWriter, expand_inputs, is_video, read_image, to_model_input

if TYPE_CHECKING:
    from ..models import CoDANet


@dataclasses.dataclass
class ExplainOptions:
    """What to explain: `target` (a class index or name), else the `top` K predicted classes, or
    every class (`all_classes`); at DAU layer `layer` (0: the input pixels)."""
    target: int | str | None = None
    top: int = 1
    all_classes: bool = False
    layer: int = 0
    resize: str = "fit"
    batch_size: int = 32          # video frames per batch


def class_name(model: CoDANet, k: int) -> str:
    return model.class_names[k] if model.class_names else str(k)


def chosen_classes(model: CoDANet, logits: torch.Tensor, opts: ExplainOptions) -> list[int]:
    """The classes to explain for one sample's logits (K,)."""
    if opts.all_classes:
        return list(range(model.num_classes))
    if opts.target is not None:
        return model.resolve_targets(opts.target, 1).tolist()
    return logits.topk(min(opts.top, model.num_classes)).indices.tolist()


@torch.no_grad()
def explain_image(model: CoDANet, x: torch.Tensor, opts: ExplainOptions) -> dict:
    """Explain one model input (C, S, S): logits, probabilities, maps (k, H_l, W_l) of the chosen
    classes and the exactness check of each."""
    out = model.explain_all(x[None], layer=opts.layer)          # all classes in one pass
    logits = out["logits"][0]
    classes = chosen_classes(model, logits, opts)
    maps = out["contributions"][0, classes]                     # (k, H_l, W_l)
    probs = torch.sigmoid(logits)            # the model is trained with BCE (eq. 9): one sigmoid per class
    top = logits.topk(min(5, model.num_classes)).indices.tolist()
    record = dict(
        prediction=top[0], prediction_name=class_name(model, top[0]),
        logits=[round(float(v), 6) for v in logits], probabilities=[round(float(v), 6) for v in probs],
        top_k=[dict(index=k, name=class_name(model, k), probability=round(float(probs[k]), 6)) for k in top],
        layer=opts.layer,
        explained=[dict(index=k, name=class_name(model, k), logit=float(logits[k]),
                        sum_contributions=float(m.sum()),
                        check=float(m.double().sum() - (logits[k].double() - model.logit_bias)))
                   for k, m in zip(classes, maps)])
    return dict(record=record, maps=maps, classes=classes, probabilities=probs)


def colour_map(maps: np.ndarray, scale: float) -> np.ndarray:
    """(..., H, W) values -> (..., H, W, 3) uint8 in the bwr colour map on [-scale, scale]."""
    import matplotlib
    rgb = matplotlib.colormaps["bwr"]((maps / (2 * scale) + 0.5).clip(0, 1))[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def upsample_nearest(values: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """An (h, w) map resized to `size` (H, W) by nearest neighbours (each map pixel a block)."""
    m = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(m, size=tuple(size[:2]), mode="nearest")[0, 0].numpy()


def overlay(image: np.ndarray, contributions: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    """Image (H, W, C) in [0, 1] under its contribution map (h, w), upsampled to the image:
    grey image, red where the map is positive, blue where negative, `opacity` at the largest |value|."""
    h, w = image.shape[:2]
    grey = image.mean(-1) if image.ndim == 3 else image
    m = upsample_nearest(contributions, (h, w))
    scale = float(np.abs(m).max()) or 1.0
    alpha = (np.abs(m) / scale * opacity)[..., None]
    colour = colour_map(m, scale).astype(np.float32) / 255
    base = np.repeat(grey[..., None], 3, -1)
    return (1 - alpha) * base + alpha * colour


def save_image_figure(model: CoDANet, x: torch.Tensor, result: dict, path: str, title: str) -> str:
    """Input | one map per chosen class (shared symmetric scale) | overlay of the first."""
    from .plot import new_figure, save_figure, show_contributions, show_image
    maps, classes, probs = result["maps"], result["classes"], result["probabilities"]
    shown = min(len(classes), 10)
    fig, axes = new_figure(1, shown + 2, figsize=(2.0 * (shown + 2), 2.5), squeeze=False)
    axes = axes[0]
    show_image(axes[0], x)
    axes[0].set_title("input", fontsize=8)
    scale = float(maps[:shown].abs().max()) or 1.0
    for ax, k, m in zip(axes[1:], classes[:shown], maps[:shown]):
        im = show_contributions(ax, m, scale)
        ax.set_title(f"{class_name(model, k)}\np={float(probs[k]):.2f}", fontsize=8)
    image = x.permute(1, 2, 0).numpy()
    axes[-1].imshow(overlay(image, maps[0].numpy()), interpolation="nearest")
    axes[-1].set_xticks([]), axes[-1].set_yticks([])
    axes[-1].set_title(f"overlay: {class_name(model, classes[0])}", fontsize=8)
    fig.colorbar(im, ax=list(axes), fraction=0.015, pad=0.01)       # the scale of the maps, at the right
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def _stem(path: str, used: set) -> str:
    base = os.path.splitext(os.path.basename(path))[0] or "input"
    stem, i = base, 1
    while stem in used:
        i += 1
        stem = f"{base}-{i}"
    used.add(stem)
    return stem


def explain_one_image(model: CoDANet, path: str, opts: ExplainOptions, out_dir: str, stem: str,
                      device: str | torch.device) -> dict:
    image, notes = read_image(path)
    x, more = to_model_input(image, model.in_channels, model.input_size, opts.resize)
    notes += more
    result = explain_image(model, x.to(device), opts)
    result["maps"], result["probabilities"] = result["maps"].cpu(), result["probabilities"].cpu()
    rec = result["record"]
    figure = save_image_figure(model, x, result, os.path.join(out_dir, stem + ".png"),
                               f"{os.path.basename(path)}: predicted {rec['prediction_name']} "
                               f"(p={max(rec['probabilities']):.2f}), layer {opts.layer}")
    maps_path = os.path.join(out_dir, stem + ".npy")
    from ..utils.io import atomic_path
    with atomic_path(maps_path) as tmp, open(tmp, "wb") as f:
        np.save(f, result["maps"].numpy().astype(np.float32))
    rec.update(file=path, kind="image", input_shape=list(image.shape), model_input=list(x.shape),
               conversion=notes or ["used as it is"], figure=figure, maps=maps_path)
    return rec


def video_frame_panel(x: torch.Tensor, contributions: np.ndarray, size: int) -> np.ndarray:
    """One output frame: the model's view of the frame beside its map, each `size` pixels high."""
    view = x.permute(1, 2, 0).numpy()
    view = np.repeat(view, 3, -1) if view.shape[-1] == 1 else view
    h, w = view.shape[:2]
    fy = max(1, size // h)
    left = np.kron((view * 255).round().astype(np.uint8), np.ones((fy, fy, 1), np.uint8))
    scale = float(np.abs(contributions).max()) or 1.0
    m = upsample_nearest(contributions, left.shape[:2])
    gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([left, gap, colour_map(m, scale)], axis=1)


def positive_centre(contributions: np.ndarray) -> tuple[float, float] | None:
    """(row, column) centre of mass of the positive contributions, in map pixels."""
    pos = np.clip(contributions, 0, None)
    total = pos.sum()
    if total <= 0:
        return None
    rows, cols = np.indices(pos.shape)
    return float((rows * pos).sum() / total), float((cols * pos).sum() / total)


def explain_video(model: CoDANet, path: str, opts: ExplainOptions, out_dir: str, stem: str, device: str | torch.device,
                  progress: bool = True, panel_size: int = 224) -> dict:
    """Explain every frame, in batches; writes <stem>_explained.mp4 and <stem>_frames.json."""
    from ..utils.io import atomic_path, write_json
    reader = VideoReader(path)
    video_path = os.path.join(out_dir, stem + "_explained.mp4")
    frames_info, writer, notes = [], None, None
    bar = tqdm(total=reader.frames or None, desc=os.path.basename(path), unit="frame", disable=not progress)
    try:
        with atomic_path(video_path) as tmp:
            batch: list[torch.Tensor] = []

            def flush():
                nonlocal writer
                xs = torch.stack(batch).to(device)
                out = model.explain_all(xs, layer=opts.layer)
                for x, logits, maps in zip(xs.cpu(), out["logits"].cpu(), out["contributions"].cpu()):
                    k = chosen_classes(model, logits, opts)[0]
                    m = maps[k].numpy()
                    panel = video_frame_panel(x, m, panel_size)
                    if writer is None:
                        writer = VideoWriter(tmp, reader.fps, panel.shape[1], panel.shape[0])
                    writer.write(panel)
                    centre = positive_centre(m)
                    frames_info.append(dict(prediction=int(logits.argmax()), explained=k, name=class_name(model, k),
                                            probability=round(float(torch.sigmoid(logits[k])), 6),
                                            positive_centre=None if centre is None else [round(c, 3) for c in centre],
                                            check=float(m.astype(np.float64).sum()
                                                        - (float(logits[k]) - model.logit_bias))))
                bar.update(len(batch))
                batch.clear()

            for frame in reader:
                x, notes = to_model_input(frame.astype(np.float32) / 255, model.in_channels, model.input_size,
                                          opts.resize)
                batch.append(x)
                if len(batch) == opts.batch_size:
                    flush()
            if batch:
                flush()
            if writer is None:
                raise ValueError(f"{path}: the video holds no frames")
            writer.close()
    finally:
        if writer is not None:
            writer.close()                      # also after an error: no open file handles left
        bar.close()
        reader.close()
    frames_path = os.path.join(out_dir, stem + "_frames.json")
    write_json(frames_path, dict(file=path, fps=float(reader.fps), layer=opts.layer, frames=frames_info))
    return dict(file=path, kind="video", frames=len(frames_info), fps=float(reader.fps),
                conversion=notes or ["used as it is"], video=video_path, frames_json=frames_path,
                max_abs_check=max(abs(f["check"]) for f in frames_info))


def explain_inputs(model: CoDANet, inputs: list[str], opts: ExplainOptions, out_dir: str,
                   device: str | torch.device = "cpu", progress: bool = True,
                   log: Callable[[str], None] = print) -> dict:
    """Explain every input (files, folders, videos); a bad input is reported and skipped.
    Returns the content of explanations.json (written to out_dir)."""
    from ..utils.io import write_json
    os.makedirs(out_dir, exist_ok=True)
    files, errors = expand_inputs(inputs)
    failed = [dict(file=p, error=f"{p}: {e}") for p, e in errors]
    for e in failed:
        log(f"error: {e['error']}")
    done: list[dict] = []
    used: set[str] = set()
    for path in files:
        stem = _stem(path, used)
        try:
            if is_video(path):
                rec = explain_video(model, path, opts, out_dir, stem, device, progress)
                log(f"{path}: {rec['frames']} frames at {rec['fps']:g} fps ({'; '.join(rec['conversion'])}) "
                    f"-> {rec['video']}")
            else:
                rec = explain_one_image(model, path, opts, out_dir, stem, device)
                log(f"{path}: {'; '.join(rec['conversion'])}; predicted {rec['prediction_name']} "
                    f"(p={max(rec['probabilities']):.3f}) -> {rec['figure']}")
            done.append(rec)
        except (ValueError, FileNotFoundError) as e:
            failed.append(dict(file=path, error=str(e)))
            log(f"error: {e}")
    result = dict(class_names=model.class_names or [str(k) for k in range(model.num_classes)],
                  logit_bias=model.logit_bias, temperature=model.temperature, layer=opts.layer,
                  inputs=done, errors=failed)
    write_json(os.path.join(out_dir, "explanations.json"), result)
    return result
