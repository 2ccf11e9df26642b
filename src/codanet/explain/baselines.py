"""Post-hoc attribution methods behind one interface, `method.attribute(inputs, target) -> (N, H, W)`.

All methods explain the same CoDA-Net through the same input: gradient methods differentiate the
logit w.r.t. the raw image (the encoding [x, 1-x] is part of the model, as in the paper's wrapper)
and sum over colour channels; perturbation methods (Occlusion, RISE, LIME) remove pixels in the
encoded input by zeroing all of its channels -- the same removal the pixel-removal metric uses.
Captum provides Grad, IxG, IntGrad, DeepLIFT, GradCAM, Occlusion and LIME; RISE is ours.
Parameters default to the paper's (docs/evaluation.md); every one is a constructor argument.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..models.coda_net import check_images, encode

if TYPE_CHECKING:
    from ..models import CoDANet


class _Raw(nn.Module):
    """The model as a function of the raw image (for Captum)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_encoded(encode(x))


class _Encoded(nn.Module):
    """The model as a function of the encoded input (perturbation methods)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x_encoded):
        return self.model.forward_encoded(x_encoded)


class Attribution:
    """Base class: subclasses implement `_attribute(x, target)` returning (N, H, W)."""

    name = "?"

    def __init__(self, model):
        self.model = model
        self.evaluations_per_image = 1

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        check_images(inputs, self.model.in_channels)
        if target is None:
            with torch.no_grad():
                target = self.model(inputs).argmax(1)
        # the model's own target check: ints or N indices in [0, K), else a clear ValueError
        target = self.model.resolve_targets(target, len(inputs), inputs.device)
        with torch.enable_grad():
            return self._attribute(inputs.detach(), target).detach()

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CoDA(Attribution):
    """The model-inherent contributions (eq. 8) as an attribution like any post-hoc one:
    s_target(x) = [W_{0->L}(x)]_target * [x, 1-x], summed over channels, (N, H, W); each map sums
    to logit[target] - b0.  One forward and one backward pass (`CoDANet.explain`)."""

    name = "CoDA"

    def _attribute(self, x, target):
        return self.model.explain(x, target=target)["contributions"]

    def attribute_all_classes(self, inputs: torch.Tensor) -> torch.Tensor:
        """Contributions for every class: (N, K, H, W), from one batched backward pass."""
        check_images(inputs, self.model.in_channels)
        return self.model.explain_all(inputs)["contributions"]


class Grad(Attribution):
    """The gradient of the logit w.r.t. the image, summed over colour channels: signed ("Grad",
    our default) or its absolute value ("AbsGrad", Captum's Saliency default and Simonyan et
    al.'s saliency map; docs/evaluation.md compares the two)."""

    def __init__(self, model, absolute: bool = False):
        super().__init__(model)
        self.absolute = absolute
        self.name = "AbsGrad" if absolute else "Grad"

    def _attribute(self, x, target):
        from captum.attr import Saliency
        return Saliency(_Raw(self.model)).attribute(x, target=target, abs=self.absolute).sum(1)


class InputXGradient(Attribution):
    name = "IxG"

    def _attribute(self, x, target):
        from captum.attr import InputXGradient as IxG
        return IxG(_Raw(self.model)).attribute(x, target=target).sum(1)


class IntegratedGradients(Attribution):
    name = "IntGrad"

    def __init__(self, model, steps: int = 20):
        super().__init__(model)
        self.steps = steps
        self.evaluations_per_image = steps

    def _attribute(self, x, target):
        from captum.attr import IntegratedGradients as IG
        return IG(_Raw(self.model)).attribute(x, torch.zeros_like(x), target=target, n_steps=self.steps,
                                              internal_batch_size=max(1, len(x)) * self.steps).sum(1)


class DeepLift(Attribution):
    """Captum's DeepLIFT (zero baseline).  DAU layers have no registered non-linearity, so the
    rescale rule reduces to gradient x (input - baseline) through them, as in the paper's setup."""

    name = "DeepLIFT"

    def _attribute(self, x, target):
        import warnings

        from captum.attr import DeepLift as DL
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DL(_Raw(self.model)).attribute(x, torch.zeros_like(x), target=target).sum(1)


class GradCAM(Attribution):
    """GradCAM on the last DAU layer (a PlainClassifier's `cam_layer`), positive part, nearest
    upsampling to the input size."""

    name = "GradCAM"

    def _attribute(self, x, target):
        from captum.attr import LayerAttribution, LayerGradCam
        wrapped = _Raw(self.model)
        layer = self.model.cam_layer if hasattr(self.model, "cam_layer") else self.model.layers[-1]
        cam = LayerGradCam(wrapped, layer).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode="nearest")[:, 0]


def occlusion_defaults(size: int) -> tuple[int, int, int]:
    """(small patch, large patch, stride): the paper's 5, 9, stride 2 at 32 px (CIFAR) and 9, 13,
    stride 4 at 64 px (TinyImagenet); scaled with the input size beyond that."""
    if size <= 40:
        return 5, 9, 2
    scale = size / 64
    odd = lambda v: max(1, int(round(v)) | 1)  # noqa: E731
    return odd(9 * scale), odd(13 * scale), max(1, round(4 * scale))


class Occlusion(Attribution):
    """Captum Occlusion on the encoded input (patch zeroed in all channels); the logit change is
    spread evenly over the occluded pixels (Captum averages over the windows covering a pixel)."""

    def __init__(self, model, patch: int = 5, stride: int = 2, batch_size: int = 256):
        super().__init__(model)
        self.patch, self.stride, self.batch = patch, stride, batch_size
        self.name = f"Occ{patch}"

    def _attribute(self, x, target):
        from captum.attr import Occlusion as Occ
        enc = encode(x)
        c, h, w = enc.shape[1:]
        positions = (math.ceil((h - self.patch) / self.stride) + 1) * (math.ceil((w - self.patch) / self.stride) + 1)
        self.evaluations_per_image = positions + 1
        with torch.no_grad():
            a = Occ(_Encoded(self.model)).attribute(enc, sliding_window_shapes=(c, self.patch, self.patch),
                                                    strides=(c, self.stride, self.stride), baselines=0,
                                                    target=target, perturbations_per_eval=max(1, self.batch // len(x)))
        return a.mean(1)

    @torch.no_grad()
    def attribute_all_classes(self, inputs: torch.Tensor) -> torch.Tensor:
        """The maps of every class, (N, K, H, W), from one sweep of the window: each occluded
        input's logits serve all K classes.  Equal to `attribute(inputs, target=k)` for each k
        (Captum's windows, clipped at the border, and its average over the windows covering a pixel)."""
        check_images(inputs, self.model.in_channels)
        enc = encode(inputs)                                                  # (N, 2C, H, W)
        h, w = enc.shape[2:]
        tops = [i * self.stride for i in range(math.ceil((h - self.patch) / self.stride) + 1)]
        lefts = [j * self.stride for j in range(math.ceil((w - self.patch) / self.stride) + 1)]
        windows = torch.zeros(len(tops) * len(lefts), h, w, dtype=enc.dtype, device=enc.device)
        for i, (t, left) in enumerate((t, left) for t in tops for left in lefts):
            windows[i, t:t + self.patch, left:left + self.patch] = 1                # clipped at the border
        self.evaluations_per_image = len(windows) + 1
        base = self.model.forward_encoded(enc)                                # (N, K)
        total = enc.new_zeros(len(enc), base.shape[1], h, w)
        step = max(1, self.batch // len(enc))
        for s in range(0, len(windows), step):
            m = windows[s:s + step]                                           # (B, H, W)
            occluded = (enc[:, None] * (1 - m)[None, :, None]).flatten(0, 1)  # (N*B, 2C, H, W)
            delta = base[:, None] - self.model.forward_encoded(occluded).unflatten(0, (len(enc), len(m)))
            total += torch.einsum("nbk,bhw->nkhw", delta, m)
        return total / windows.sum(0)


class RISE(Attribution):
    """RISE (Petsiuk et al. 2018): saliency = E[score(x * M) M] / p over random smooth masks.

    Masks: a `grid`x`grid` binary grid with keep-probability `p`, bilinearly upsampled to
    (grid+1) cells and randomly shifted, as in the original; scores are sigmoid(logit).
    Masks are applied to all encoded channels and go through the model in batches.
    """

    name = "RISE"

    def __init__(self, model, masks: int = 6000, grid: int = 6, p: float = 0.1, batch_size: int = 500, seed: int = 0):
        super().__init__(model)
        self.n, self.grid, self.p, self.batch, self.seed = masks, grid, p, batch_size, seed
        self.evaluations_per_image = masks
        self._masks: torch.Tensor | None = None

    def masks(self, h: int, w: int) -> torch.Tensor:
        if self._masks is None or self._masks.shape[-2:] != (h, w):
            g = torch.Generator().manual_seed(self.seed)
            cell_h, cell_w = math.ceil(h / self.grid), math.ceil(w / self.grid)
            up_h, up_w = (self.grid + 1) * cell_h, (self.grid + 1) * cell_w
            grid = (torch.rand(self.n, 1, self.grid, self.grid, generator=g) < self.p).float()
            up = F.interpolate(grid, size=(up_h, up_w), mode="bilinear", align_corners=False)
            dy = torch.randint(0, cell_h, (self.n,), generator=g)
            dx = torch.randint(0, cell_w, (self.n,), generator=g)
            self._masks = torch.stack([up[i, 0, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(self.n)])
        return self._masks

    @torch.no_grad()
    def scores(self, encoded: torch.Tensor) -> torch.Tensor:
        """sigmoid(logits) of one encoded image (1, 2C, H, W) under every mask: (M, K), the s(x * M_m)
        that RISE averages (also read by scripts/rise_diagnosis.py)."""
        masks = self.masks(*encoded.shape[2:]).to(encoded.device, encoded.dtype)      # (M, H, W)
        return torch.cat([torch.sigmoid(self.model.forward_encoded(encoded * masks[s:s + self.batch, None]))
                          for s in range(0, self.n, self.batch)])                     # (M, K)

    @torch.no_grad()
    def attribute_all_classes(self, inputs: torch.Tensor) -> torch.Tensor:
        """The maps of every class, (N, K, H, W): the masked inputs' logits serve all K classes."""
        check_images(inputs, self.model.in_channels)
        enc = encode(inputs)
        masks = self.masks(*inputs.shape[2:]).to(inputs.device, enc.dtype)      # (M, H, W)
        maps = [torch.einsum("mk,mhw->khw", self.scores(enc[i:i + 1]), masks) for i in range(len(inputs))]
        return torch.stack(maps) / (self.n * self.p)                              # E[s M] / p

    @torch.no_grad()
    def _attribute(self, x, target):
        return self.attribute_all_classes(x)[torch.arange(len(x)), target]


class LIME(Attribution):
    """LIME (Ribeiro et al. 2016) over quickshift superpixels (kernel 1, max_dist 200, ratio 0.2):
    `samples` (256) random on/off patterns of the superpixels (each on with p = 1/2, the same
    seeded patterns for every image and class; "off" zeroes the encoded input), weighted by
    exp(-d^2 / 2) with d the cosine distance to the image, and a Lasso (alpha 0.01) fitted to
    the logit; only the top-3 positive superpixels keep their weight (the paper's setting).
    Per class through Captum's `Lime`; `attribute_all_classes` fits all K logits to one sweep."""

    name = "LIME"

    def __init__(self, model, samples: int = 256, kernel_size: int = 1, max_dist: float = 200,
                 ratio: float = 0.2, top: int = 3, batch_size: int = 256, alpha: float = 0.01, seed: int = 0):
        super().__init__(model)
        self.samples, self.kernel_size, self.max_dist, self.ratio = samples, kernel_size, max_dist, ratio
        self.top, self.batch, self.alpha, self.seed = top, batch_size, alpha, seed
        self.evaluations_per_image = samples

    def superpixels(self, x: torch.Tensor) -> torch.Tensor:
        """Quickshift segments of one image (C, H, W) -> (H, W) integer labels 0..F-1."""
        from skimage.segmentation import quickshift
        img = x.detach().permute(1, 2, 0).double().cpu().numpy()
        if img.shape[2] == 1:
            img = img.repeat(3, 2)
        seg = quickshift(img, kernel_size=self.kernel_size, max_dist=self.max_dist, ratio=self.ratio,
                         convert2lab=True)
        return torch.from_numpy(seg).long().to(x.device)

    def patterns(self, features: int) -> torch.Tensor:
        """(samples, F) 0/1 patterns: which superpixels each perturbed input keeps (seeded)."""
        g = torch.Generator().manual_seed(self.seed)
        return (torch.rand(self.samples, features, generator=g) < 0.5).long()

    @staticmethod
    def kernel(original: torch.Tensor, perturbed: torch.Tensor) -> float:
        """exp(-d^2 / 2), d = 1 - cos(original, perturbed): Captum's default LIME kernel, computed
        the same way (float32 cosine, double exp) so that both paths weigh samples identically."""
        d = 1 - torch.nn.CosineSimilarity(dim=0)(original.flatten().float(), perturbed.flatten().float())
        return math.exp(-1 * (d ** 2) / 2)

    def keep_top(self, weights: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """(F,) superpixel weights -> (H, W) map: the `top` largest positive weights, 0 elsewhere."""
        keep = weights.argsort(descending=True)[:self.top]
        keep = keep[weights[keep] > 0]
        return torch.where(torch.isin(seg, keep.to(seg.device)), weights.to(seg.device)[seg], 0.0)

    def _attribute(self, x, target):
        from captum.attr import Lime
        enc = encode(x)
        out = torch.zeros(len(x), *x.shape[2:], device=x.device, dtype=enc.dtype)
        for i in range(len(x)):
            seg = self.superpixels(x[i])
            z = self.patterns(int(seg.max()) + 1).to(x.device)
            mask = seg[None, None].expand(1, enc.shape[1], *seg.shape)
            with torch.no_grad():
                a = Lime(_Encoded(self.model), perturb_func=_replay(z)).attribute(
                    enc[i:i + 1], target=int(target[i]), baselines=0, feature_mask=mask,
                    n_samples=self.samples, perturbations_per_eval=self.batch)[0, 0]
            weights = torch.stack([a[seg == s][0] for s in range(len(z[0]))])
            out[i] = self.keep_top(weights, seg)
        return out

    @torch.no_grad()
    def attribute_all_classes(self, inputs: torch.Tensor) -> torch.Tensor:
        """The maps of every class, (N, K, H, W), from one sweep of `samples` perturbed inputs:
        the same patterns and weights as `attribute`, one Lasso per class's logit (sklearn fits
        the K columns independently, in float32 as Captum does)."""
        from sklearn.linear_model import Lasso
        check_images(inputs, self.model.in_channels)
        enc = encode(inputs)                                                  # (N, 2C, H, W)
        out = []
        for i in range(len(inputs)):
            seg = self.superpixels(inputs[i])                                 # (H, W) in 0..F-1
            z = self.patterns(int(seg.max()) + 1).to(inputs.device)           # (S, F)
            perturbed = enc[i] * z[:, seg][:, None].to(enc.dtype)             # (S, 2C, H, W)
            logits = torch.cat([self.model.forward_encoded(perturbed[s:s + self.batch])
                                for s in range(0, len(z), self.batch)])       # (S, K)
            similarity = torch.tensor([self.kernel(enc[i], p) for p in perturbed])     # (S,)
            fit = Lasso(alpha=self.alpha).fit(z.float().cpu().numpy(), logits.float().cpu().numpy(),
                                              sample_weight=similarity.cpu().numpy())
            coef = torch.from_numpy(fit.coef_).reshape(logits.shape[1], -1)   # (K, F)
            out.append(torch.stack([self.keep_top(w, seg) for w in coef]))
        return torch.stack(out).to(enc.dtype)


def _replay(patterns: torch.Tensor):
    """A Captum perturbation generator that yields our seeded patterns, one (1, F) row at a time."""
    def perturb(_inputs, **_kwargs):
        yield from (row[None] for row in patterns)
    return perturb


def default_methods(input_size: int) -> dict:
    """name -> (class, default keyword arguments) with the paper's parameters."""
    small, large, stride = occlusion_defaults(input_size)
    return {
        "CoDA": (CoDA, {}), "Grad": (Grad, {}), "AbsGrad": (Grad, dict(absolute=True)),
        "IxG": (InputXGradient, {}), "IntGrad": (IntegratedGradients, {}),
        "DeepLIFT": (DeepLift, {}), "GradCAM": (GradCAM, {}),
        f"Occ{small}": (Occlusion, dict(patch=small, stride=stride)),
        f"Occ{large}": (Occlusion, dict(patch=large, stride=stride)),
        "RISE": (RISE, {}), "LIME": (LIME, {}),
    }


def make_methods(model: CoDANet, names, input_size: int, **overrides) -> dict:
    """Instantiate methods by name ('CoDA', 'Grad', 'AbsGrad', 'IxG', 'IntGrad', 'DeepLIFT', 'GradCAM',
    'Occ<k>', 'RISE', 'LIME'); `overrides[name]` holds keyword arguments for one method."""
    known = default_methods(input_size)
    out = {}
    for name in names:
        if name in known:
            cls, kwargs = known[name]
        elif name.startswith("Occ") and name[3:].isdigit() and int(name[3:]) > 0:
            cls, kwargs = Occlusion, dict(patch=int(name[3:]), stride=occlusion_defaults(input_size)[2])
        else:
            raise ValueError(f"unknown attribution method {name!r}; available: {', '.join(known)} "
                             "(or Occ<k> for any patch size k)")
        out[name] = cls(model, **{**kwargs, **overrides.get(name, {})})
    return out
