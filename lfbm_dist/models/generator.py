"""Top-down generators g_β(z): (B, nz) -> (B, C, R, R) in [−1, 1].

The named architectures are the paper's Table 7 (SVHN 32², CIFAR-10 32², CelebA 64²) and
Table 12 (CelebAMask-HQ 256²) as implemented by the official code: transposed convolutions
(kernel 4, stride 2, padding 1) doubling the resolution, LeakyReLU(0.2), tanh output,
Xavier-normal weights. `celebahq256` with nz=128, ngf=128 has exactly Table 13's
49,817,731 parameters. `mnist28` is the official `train_mnist.py` generator used for the
anomaly-detection experiment (Table 4): two fully-connected layers and two ×2 transposed
convolutions, each followed by BatchNorm and ReLU. The `tiny*` ones are for tests and the
CPU quickstart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GeneratorSpec:
    first_kernel: int  # 1×1 latent -> first_kernel² feature map
    channel_mults: tuple[int, ...]  # feature channels per stage, in units of ngf
    final_upsample: bool  # last layer: ×2 transposed conv (True) or 3×3 'same' conv (False)
    default_ngf: int
    batch_norm = False  # no layer depends on the other images of the batch

    def resolution(self) -> int:
        return self.first_kernel * 2 ** (len(self.channel_mults) - 1) * (2 if self.final_upsample else 1)

    def build(self, nz: int, ngf: int, image_channels: int) -> nn.Module:
        return ConvGenerator(self, nz, ngf, image_channels)


@dataclass(frozen=True)
class MLPGeneratorSpec:
    """The official MNIST generator: z -> FC 16·ngf -> FC 2·ngf × (R/4)² -> ×2 deconv ngf -> ×2 deconv C."""

    image_size: int
    default_ngf: int
    batch_norm = True  # BatchNorm: training output depends on the micro-batch

    def resolution(self) -> int:
        return self.image_size

    def build(self, nz: int, ngf: int, image_channels: int) -> nn.Module:
        return MLPGenerator(nz, ngf, image_channels, self.image_size)


GENERATOR_SPECS: dict[str, GeneratorSpec | MLPGeneratorSpec] = {
    "tiny16": GeneratorSpec(4, (2, 1), True, 16),
    "tiny32": GeneratorSpec(4, (4, 2, 1), True, 16),
    "mnist28": MLPGeneratorSpec(28, 64),
    "svhn32": GeneratorSpec(4, (8, 4, 2), True, 64),
    "cifar10_32": GeneratorSpec(8, (8, 4, 2), False, 128),
    "celeba64": GeneratorSpec(4, (8, 4, 2, 1), True, 128),
    "celebahq256": GeneratorSpec(4, (16, 8, 4, 2, 2, 1), True, 128),
}


class ConvGenerator(nn.Module):
    def __init__(self, spec: GeneratorSpec, nz: int, ngf: int, image_channels: int = 3, leak: float = 0.2):
        super().__init__()
        self.nz, self.resolution, self.image_channels = nz, spec.resolution(), image_channels
        widths = [m * ngf for m in spec.channel_mults]
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, widths[0], spec.first_kernel, 1, 0), nn.LeakyReLU(leak)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(leak)]
        if spec.final_upsample:
            layers.append(nn.ConvTranspose2d(widths[-1], image_channels, 4, 2, 1))
        else:
            layers.append(nn.ConvTranspose2d(widths[-1], image_channels, 3, 1, 1))
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.xavier_normal_(m.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], self.nz, 1, 1))  # (B, C, R, R)


class MLPGenerator(nn.Module):
    """Official `train_mnist.py` generator. Its BatchNorm layers use batch statistics in training
    (Langevin and learning passes alike, as the official code does) and running statistics in
    eval mode, so a global batch split over several ranks or micro-batches trains differently:
    the trainer warns when that happens."""

    def __init__(self, nz: int, ngf: int = 64, image_channels: int = 1, image_size: int = 28):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"MLPGenerator needs an image size divisible by 4, got {image_size}")
        self.nz, self.resolution, self.image_channels = nz, image_size, image_channels
        self.start = (2 * ngf, image_size // 4, image_size // 4)  # (C, H, W) of the first feature map
        hidden, start_numel = 16 * ngf, 2 * ngf * (image_size // 4) ** 2
        self.fc = nn.Sequential(
            nn.Linear(nz, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, start_numel),
            nn.BatchNorm1d(start_numel),
            nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * ngf, ngf, 2, stride=2),
            nn.BatchNorm2d(ngf),
            nn.ReLU(),
            nn.ConvTranspose2d(ngf, image_channels, 2, stride=2),
            nn.Tanh(),
        )
        for m in self.modules():  # the official weights_init_xavier: convolutions and BatchNorm only
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.xavier_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z.reshape(z.shape[0], self.nz))
        return self.deconv(h.reshape(z.shape[0], *self.start))  # (B, C, R, R)


def build_generator(arch: str, nz: int, ngf: int | None = None, image_channels: int = 3) -> nn.Module:
    if arch not in GENERATOR_SPECS:
        raise ValueError(f"unknown generator arch {arch!r}; choose from {sorted(GENERATOR_SPECS)}")
    spec = GENERATOR_SPECS[arch]
    return spec.build(nz, ngf or spec.default_ngf, image_channels)
