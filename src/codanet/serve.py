"""`codanet serve`: an interactive viewer of CoDA-Net explanations in the browser (Gradio).

One page: upload an image (or take a test image, or a 3x3 grid of test images), see the
prediction with class probabilities, the contribution map of any class, all classes side by side
(one `explain_all` pass), the contributions at any layer (`explain(..., layer=l)`), the two halves
of the linear map (the weights on x and on 1 - x) and an overlay with adjustable opacity.
Listens on 127.0.0.1 unless --host says otherwise.  Install with `pip install -e ".[app]"`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

DISPLAY = 280            # pixels of a displayed map


class Viewer:
    """The page's state-free computations: an image in, pictures and numbers out."""

    def __init__(self, model, test_set=None):
        self.model = model.eval()
        self.test = test_set
        self.names = model.class_names or [str(k) for k in range(model.num_classes)]
        self.size = model.input_size or 28

    # -- inputs --------------------------------------------------------------------------
    def load_upload(self, path: str) -> torch.Tensor:
        """An uploaded file -> model input (C, S, S); ValueError with one line for bad files."""
        from .explain.inputs import read_image, to_model_input
        image, _ = read_image(path)
        x, _ = to_model_input(image, self.model.in_channels, self.size, "fit")
        return x

    def test_image(self, index: int) -> torch.Tensor:
        if self.test is None:
            raise ValueError("no test set is available for this model")
        from .data import make_batch
        return make_batch(self.test, [index % len(self.test)], "none", None, train=False)[0]

    def test_grid(self, seed: int) -> torch.Tensor:
        """A 3x3 grid of test images of 9 different classes (the localisation metric's input)."""
        if self.test is None:
            raise ValueError("no test set is available for this model")
        from .data import make_batch
        g = torch.Generator().manual_seed(seed)
        classes = torch.randperm(self.model.num_classes, generator=g)[:9].tolist()
        idx = [int(torch.nonzero(self.test.labels == c)[torch.randint(0, 50, (1,), generator=g)].item())
               for c in classes]
        x = make_batch(self.test, idx, "none", None, train=False)
        rows = [torch.cat(list(x[r * 3:(r + 1) * 3]), dim=2) for r in range(3)]
        return torch.cat(rows, dim=1)

    # -- outputs -------------------------------------------------------------------------
    def probabilities(self, x: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            p = torch.sigmoid(self.model(x[None]))[0]           # the model's own BCE outputs
        return {name: float(v) for name, v in zip(self.names, p)}

    def views(self, x: torch.Tensor, target: int, layer: int, opacity: float) -> dict:
        """Pictures (H, W, 3) uint8: the map of `target` at `layer`, every class's map, the linear
        map's halves on x and on 1 - x (layer 0), the overlay."""
        from .explain.explain_files import colour_map, overlay
        out = self.model.explain_all(x[None], layer=layer)          # every class in one pass
        everything = out["contributions"][0]                        # (K, H_l, W_l)
        m = everything[target].numpy()
        image = x.permute(1, 2, 0).numpy()
        views: dict[str, Any] = dict(map=_upsample(colour_map(m, float(np.abs(m).max()) or 1.0)),
                     overlay=_upsample((overlay(image, m, opacity) * 255).round().astype(np.uint8)),
                     all_classes=self.class_grid(everything))
        if layer == 0:
            w = (out["linear_map"][0, target] * self.model.temperature).numpy()   # (2C, H, W): a row of W_{0->L}
            c = self.model.in_channels
            on_x, on_inv = w[:c].sum(0), w[c:].sum(0)
            scale = float(max(np.abs(on_x).max(), np.abs(on_inv).max())) or 1.0
            views["weights_x"] = _upsample(colour_map(on_x, scale))
            views["weights_1mx"] = _upsample(colour_map(on_inv, scale))
        check = float(m.sum()) - (float(out["logits"][0, target]) - self.model.logit_bias)
        views["text"] = (f"**{self.names[target]}** at layer {layer}: contributions sum to "
                         f"{float(m.sum()):.4f} = logit − b₀ (difference {check:.1e})")
        return views

    def class_grid(self, maps: torch.Tensor) -> np.ndarray:
        """All classes' maps side by side on one symmetric scale, with their names."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        k = len(maps)
        cols = min(k, 5)
        rows = -(-k // cols)
        fig = Figure(figsize=(1.6 * cols, 1.75 * rows), dpi=100)
        scale = float(maps.abs().max()) or 1.0
        for i in range(k):
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.imshow(maps[i].numpy(), cmap="bwr", vmin=-scale, vmax=scale, interpolation="nearest")
            ax.set_title(self.names[i], fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _upsample(rgb: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    f = max(1, size // max(rgb.shape[:2]))
    return np.kron(rgb, np.ones((f, f, 1), dtype=rgb.dtype))


def _as_display(x: torch.Tensor) -> np.ndarray:
    img = x.permute(1, 2, 0).numpy()
    img = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
    return _upsample((img * 255).round().astype(np.uint8))


def _callbacks(viewer: Viewer, gr: Any) -> tuple[Callable, Callable, Callable]:
    """(show, new_image, upload): what the page's events run."""

    def show(x, target_name, layer, opacity):
        if x is None:
            return [None] * 6 + ["Upload an image or pick a test image."]
        target = viewer.names.index(target_name) if target_name in viewer.names else 0
        v = viewer.views(x, target, int(layer), float(opacity))
        return (viewer.probabilities(x), v["map"], v["all_classes"], v["overlay"], v.get("weights_x"),
                v.get("weights_1mx"), v["text"])

    def new_image(x, layer, opacity):
        probs = viewer.probabilities(x)
        best = max(probs, key=probs.get)
        return (x, _as_display(x), gr.update(value=best), f"Predicted: **{best}** ({probs[best]:.3f})",
                *show(x, best, layer, opacity))

    def upload(path, layer, opacity):
        """A new file; a bad one leaves the page as it was and says why in the prediction line."""
        try:
            if path is None:
                raise ValueError("no file received")
            x = viewer.load_upload(path)
        except (ValueError, FileNotFoundError) as e:
            message = f"Cannot use this file: {str(e).replace(str(path), os.path.basename(str(path)))}"
            gr.Warning(message)
            return [gr.update()] * 3 + [f"⚠ {message}"] + [gr.update()] * 7
        return new_image(x, layer, opacity)

    return show, new_image, upload


def build_app(viewer: Viewer) -> Any:
    """The Gradio page: input and class probabilities on the left; the class's map, the overlay,
    the linear map's two halves and every class's map on the right."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    depth = len(viewer.model.layers)
    show, new_image, upload = _callbacks(viewer, gr)
    with gr.Blocks(title="codanet: CoDA-Net explanations") as app:
        gr.Markdown(f"# CoDA-Net explanations — `{viewer.model.name}`, T = {viewer.model.temperature:g}\n"
                    "Red: evidence for the class, blue: against. Every map sums exactly to the class's "
                    "logit − b₀.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload_box = gr.File(label="Upload an image", elem_id="upload")
                with gr.Row():
                    index = gr.Number(value=0, precision=0, label="test image", elem_id="index")
                    pick = gr.Button("Test image", elem_id="pick")
                    grid = gr.Button("3×3 grid", elem_id="grid")
                shown = gr.Image(label="input", interactive=False, elem_id="input")
                prediction = gr.Markdown(elem_id="prediction")
                probs = gr.Label(label="class probabilities (sigmoid)", num_top_classes=5, elem_id="probs")
            with gr.Column(scale=2):
                with gr.Row():
                    target = gr.Dropdown(viewer.names, value=viewer.names[0], label="class", elem_id="target")
                    layer = gr.Slider(0, depth, value=0, step=1, label="layer (0: pixels)", elem_id="layer")
                    opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="overlay opacity", elem_id="opacity")
                check = gr.Markdown(elem_id="check")
                with gr.Row():
                    cmap = gr.Image(label="contributions of the class", interactive=False, elem_id="map")
                    over = gr.Image(label="overlay", interactive=False, elem_id="overlay")
                with gr.Row():
                    wx = gr.Image(label="linear map: weights on x", interactive=False, elem_id="weights_x")
                    w1 = gr.Image(label="linear map: weights on 1 − x", interactive=False, elem_id="weights_1mx")
                every = gr.Image(label="all classes (one explain_all pass)", interactive=False, elem_id="all")
        outs = [probs, cmap, every, over, wx, w1, check]
        first = [state, shown, target, prediction] + outs
        # the box is emptied after every upload (also a failed one), ready for the next file
        upload_box.upload(upload, [upload_box, layer, opacity], first).then(lambda: None, None, upload_box)
        pick.click(lambda i, depth_, o: new_image(viewer.test_image(int(i or 0)), depth_, o),
                   [index, layer, opacity], first)
        grid.click(lambda i, depth_, o: new_image(viewer.test_grid(int(i or 0)), depth_, o),
                   [index, layer, opacity], first)
        for control in (target, layer, opacity):
            control.change(show, [state, target, layer, opacity], outs)
    return app


def serve(model_spec: str, host: str = "127.0.0.1", port: int = 7860) -> None:
    from .evaluate.runner import checkpoint_test_split
    from .train import load_model
    try:                                          # the model and the test images of its own data set
        model, _, test = checkpoint_test_split(model_spec)
    except (FileNotFoundError, ValueError, ImportError):
        model, _ = load_model(model_spec)         # no usable test split: uploads only (a bad file raises here)
        test = None
    app = build_app(Viewer(model, test))
    print(f"codanet serve: {model_spec} on http://{host}:{port}", flush=True)
    app.queue().launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)
