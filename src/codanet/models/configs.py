"""Architectures as plain data: the paper's S and L, our M, XL and CPU presets (README, "Models").
One dict per model; every list has one entry per DAU layer.  The last layer's `channels` entry is
replaced by `num_classes`.

Parameter count of a layer: C_in*r*k^2 (B) + r*C_out*C_in*k^2 (A) + C_out*C_in*k^2 (b).
"""
import math

LOGIT_BIAS = math.log(0.1 / 0.9)   # b0, fixed (sec. 3.3), same for every dataset

CONFIGS: dict[str, dict] = {
    # CIFAR-10, 32x32 -> 8x8 final positions (T = 64 is average pooling). 7.78 M parameters.
    "coda_s": dict(
        kernel_sizes=[3] * 8 + [1],
        strides=[1, 1, 2, 1, 1, 2, 1, 1, 1],
        paddings=[1] * 8 + [0],
        channels=[16, 16, 32, 32, 32, 64, 64, 64, 10],
        ranks=[32, 32] + [64] * 7,
        temperature=1000.0,
        input_size=32, num_classes=10,
    ),
    # CIFAR-10 "+aug" model, 28.0 M (our design; the authors never released M): S with 1.5x
    # the channels and ranks 48, 48, 104 x7.
    "coda_m": dict(
        kernel_sizes=[3] * 8 + [1],
        strides=[1, 1, 2, 1, 1, 2, 1, 1, 1],
        paddings=[1] * 8 + [0],
        channels=[24, 24, 48, 48, 48, 96, 96, 96, 10],
        ranks=[48, 48] + [104] * 7,
        temperature=1000.0,
        input_size=32, num_classes=10,
    ),
    # ImageNet-100, 240x240 crops -> 240/3/2/2 = 20x20 final positions. 47.5 M parameters.
    "coda_l": dict(
        kernel_sizes=[7] + [3] * 8,
        strides=[3, 1, 1, 2, 1, 1, 2, 1, 1],
        paddings=[3] + [1] * 8,
        channels=[16, 32, 32, 64, 64, 64, 64, 64, 100],
        ranks=[64] * 3 + [128] * 3 + [256] * 3,
        temperature=1e5,
        input_size=240, num_classes=100,
    ),
    # TinyImagenet, 64x64 -> 8x8 final positions, 200 classes, 62.1 M (our design): L's channels
    # and ranks with a 3x3 stride-1 stem for the small input and strides 2, 2, 2 to reach 8x8.
    "coda_xl": dict(
        kernel_sizes=[3] * 9,
        strides=[1, 1, 2, 1, 1, 2, 1, 2, 1],
        paddings=[1] * 9,
        channels=[16, 32, 32, 64, 64, 64, 64, 64, 200],
        ranks=[64] * 3 + [128] * 3 + [256] * 3,
        temperature=6400.0,
        input_size=64, num_classes=200,
    ),
    # CPU preset for 28x28 grayscale (Fashion-MNIST, MNIST): 28 -> 14 -> 7, 49 final positions,
    # ~93 M multiply-adds per image (coda_s: ~880 M), so it trains at a few hundred images/s on 2 cores.
    "coda_cpu": dict(
        kernel_sizes=[3] * 8 + [1],
        strides=[1, 2, 1, 2, 1, 1, 1, 1, 1],
        paddings=[1] * 8 + [0],
        channels=[16, 16, 32, 32, 48, 48, 48, 48, 10],
        ranks=[8, 8] + [16] * 7,
        temperature=500.0,
        input_size=28, num_classes=10, in_channels=1,
    ),
}
