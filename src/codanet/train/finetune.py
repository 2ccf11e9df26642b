"""Starting a run from trained weights (docs/finetuning.md).

`init_from` names shipped weights ('coda_cpu:fashion_mnist') or a codanet checkpoint.  The run
keeps every DAU layer of that model; when the data set has another number of classes, the class
layer (the last DAU layer, whose output channels are the classes) is replaced by a new one of the
same kernel, stride, padding and rank.  T and b0 are kept unless the config sets `temperature`.

`train_layers` ('all', 'last' or N) with `freeze_epochs` trains only the last N DAU layers for the
first `freeze_epochs` epochs (null: the whole run); the frozen layers get no gradient, so Adam
leaves them unchanged, and they join training when the freeze ends.
"""
from __future__ import annotations

import copy
import json
import os

from ..models import CoDANet
from ..utils.io import write_json, write_text


def model_from(spec: str, num_classes: int, in_channels: int, temperature: float | None = None) -> CoDANet:
    """The model of `spec` (shipped weights or checkpoint) for a data set of `num_classes` classes
    with `in_channels` channels; a new class layer when the class count differs."""
    from .checkpoint import load_model
    source, _ = load_model(spec)
    if source.in_channels != in_channels:
        raise ValueError(f"init_from {spec}: the model takes {source.in_channels}-channel images, the data "
                         f"set has {in_channels}; convert the images (folder data sets follow the model)")
    model = source
    if num_classes != source.num_classes:
        model = with_class_layer(source, num_classes)
    if temperature is not None:
        model.temperature = float(temperature)
        model.arch["temperature"] = model.temperature
    return model.train()


def with_class_layer(source: CoDANet, num_classes: int) -> CoDANet:
    """A copy of `source` whose last DAU layer is new (random, `num_classes` output channels)."""
    arch = copy.deepcopy(source.arch)
    arch["channels"][-1] = arch["num_classes"] = num_classes
    model = CoDANet(**arch)
    keep = {k: v for k, v in source.state_dict().items()
            if not k.startswith(f"layers.{len(source.layers) - 1}.")}
    model.load_state_dict(keep, strict=False)       # every tensor but the class layer's
    model.class_names = None
    return model


def trainable_layers(cfg: dict, depth: int, epoch: int) -> int:
    """How many of the last DAU layers train in `epoch` (0-based): all after the freeze."""
    spec, until = cfg["train_layers"], cfg["freeze_epochs"]
    if spec == "all" or (until is not None and epoch >= until):
        return depth
    return 1 if spec == "last" else min(int(spec), depth)


def set_trainable(model: CoDANet, n_last: int) -> None:
    """requires_grad only for the parameters of the last `n_last` DAU layers."""
    depth = len(model.layers)
    for i, layer in enumerate(model.layers):
        for p in layer.parameters():
            p.requires_grad_(i >= depth - n_last)


def source_description(spec: str) -> dict:
    """What `init_from` names: the spec, the file and its sha256, its data set and classes."""
    from ..models.pretrained import resolve_weights, sha256_of
    from .checkpoint import read_state
    path = resolve_weights(spec)
    state, _ = read_state(path)
    return dict(init_from=spec, file=os.path.basename(path), sha256=sha256_of(path),
                dataset=state.get("dataset"), classes=state.get("classes"))


def write_card(out_dir: str, cfg: dict, summary: dict, classes: list[str]) -> str:
    """model_card.json and model_card.md of a fine-tuned run: source weights, classes, recipe,
    accuracy per epoch.  Returns the Markdown path."""
    source = source_description(cfg["init_from"])
    new_layer = len(source["classes"] or []) != len(classes)       # model_from replaces it only then
    card = dict(source=source, classes=list(classes), new_class_layer=new_layer,
                train_layers=cfg["train_layers"], freeze_epochs=cfg["freeze_epochs"],
                test_top1=summary["test_accuracy"], test_top5=summary["test_top5"],
                train_images=summary["train_images"], test_images=summary["test_images"],
                epochs=summary["epochs"], history=summary["history"], config=cfg)
    write_json(os.path.join(out_dir, "model_card.json"), card)
    frozen = ("every layer trained" if cfg["train_layers"] == "all" else
              f"only the last {cfg['train_layers']} layer(s) trained for "
              + (f"the first {cfg['freeze_epochs']} epoch(s)" if cfg["freeze_epochs"] else "the whole run"))
    lines = [f"# Model card: fine-tuned from `{source['init_from']}`", "",
             f"Source: `{source['file']}` (sha256 `{source['sha256'][:16]}...`), trained on {source['dataset']}.",
             f"Fine-tuned on `{cfg['dataset']}`" + (f" ({cfg['data_dir']})" if cfg.get("data_dir") else "")
             + f": {summary['train_images']:,} training and {summary['test_images']:,} test images, "
             f"{len(classes)} classes ({', '.join(classes)}).",
             ("A new class layer replaced the source's." if new_layer else
              "The source's class layer was kept (same number of classes) and trained for the new classes.")
             + f" {frozen.capitalize()}; T = {summary['temperature']:g}.", "",
             f"Test top-1 {100 * summary['test_accuracy']:.2f} %, top-5 {100 * summary['test_top5']:.2f} % after "
             f"{summary['epochs']:g} epochs (per epoch: "
             + ", ".join(f"{100 * h['test_top1']:.2f}" for h in summary["history"]) + " %).", "",
             "Config:", "", "```json", json.dumps(cfg, indent=1, sort_keys=True), "```", ""]
    path = os.path.join(out_dir, "model_card.md")
    write_text(path, "\n".join(lines))
    return path


def finetune(source: str | CoDANet, data_dir: str, out_dir: str, *, dataset: str = "folder",
             progress: bool = True, **overrides) -> tuple[CoDANet, dict]:
    """Fine-tune `source` (shipped weights 'coda_cpu:fashion_mnist', a checkpoint path or a CoDANet)
    on the image folder `data_dir` (root/<class>/*.png, or root/train + root/test) with the
    `finetune` recipe; `overrides` are config keys (epochs=2, train_layers="last", ...).
    Returns (the fine-tuned model in eval mode, the run's summary); the run folder `out_dir` holds
    model.safetensors, model_card.md and the checkpoints (docs/finetuning.md)."""
    from .checkpoint import load_model, save_checkpoint
    from .config import load_config_file, make_config
    from .trainer import train
    if isinstance(source, CoDANet):
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "source.safetensors")
        save_checkpoint(path, source, None, dict(classes=source.class_names))
        source = path
    cfg = make_config(dict(overrides, init_from=source, dataset=dataset, data_dir=data_dir),
                      base=load_config_file("finetune"))
    summary = train(cfg, out_dir, progress=progress)
    model, _ = load_model(os.path.join(out_dir, "model.safetensors"))
    return model, summary
