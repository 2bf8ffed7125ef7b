"""Networks: the ConvNet of the paper (section 5.1) and small CIFAR-style nets for cross-architecture tests.

ConvNet = `depth` x [conv3x3(width, padding 1) -> norm -> ReLU -> pool 2x2 stride 2] -> Linear.
Depth 3 for 32x32 images, 4 for 64x64. Norm "instance" is the paper's choice: group norm with one
channel per group (mean / biased variance over H, W, eps 1e-5, per-channel affine).

The layers below are PyTorch's and define the maths. On the CPU an optional fast path
(`podd_lib.fast`) runs a ConvNet block (conv, instance norm, ReLU, avg-pool) as one op with
hand-written derivatives and compiled kernels: the same maths with less memory and time. It is
one branch in `ConvNet._features` and in `InstanceNorm.forward`; `set_backend(model, fast=False)`
(the config's backend = "reference") leaves only the layers.

Batch norm (`norm="batch"`) keeps running statistics that it updates in place during training;
`torch.func.vmap` cannot batch that over stacked models, so callers that train many models at
once must fall back to a loop over models (see `is_vmappable`).

Initialisation is PyTorch's default (kaiming-uniform conv / linear weights with a = sqrt(5),
uniform biases, norm weights 1 and biases 0). `fresh_params` draws it reproducibly from a seed
inside `torch.random.fork_rng`, always on the CPU, so the global RNG is untouched and the same
seed gives the same network on every device.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from podd_lib.errors import PoddError
from podd_lib.fast import block

ARCHS = ("convnet", "resnet18", "vgg11", "alexnet")
NORMS = ("instance", "batch", "none")
POOLS = ("avg", "max")

class ConvNet(nn.Module):
    """The dataset-distillation ConvNet: depth x (conv3x3 -> norm -> ReLU -> pool), then a linear layer."""

    # The optional fast path (`podd_lib.fast`), same maths as the layers; `set_backend` turns it all off.
    fused_blocks = True  # instance-norm, avg-pool blocks as one op (`fast.block`); False: layer by layer
    conv_dtype: torch.dtype | None = None  # fused blocks only: convolutions in this dtype (bfloat16), the rest as is
    cpu_kernels = True  # fused blocks only: their elementwise work in compiled kernels (`fast.kernels`) where they apply

    def __init__(
        self,
        channels: int = 3,
        num_classes: int = 10,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        pool: str = "avg",
        im_size: tuple[int, int] = (32, 32),
    ):
        super().__init__()
        h, w = im_size
        if h >> depth < 1 or w >> depth < 1:
            raise PoddError(f"image size {h}x{w} is too small for a depth-{depth} ConvNet")
        layers: list[nn.Module] = []
        c_in = channels
        for _ in range(depth):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), make_norm(norm, width),
                       nn.ReLU(), make_pool(pool)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * (h >> depth) * (w >> depth), num_classes)

    def forward(self, x: Tensor, embed: bool = False) -> Tensor:
        """Logits, or with embed=True the flattened features before the classifier (DM, DREAM)."""
        z = self._features(x).flatten(1)
        return z if embed else self.classifier(z)

    def _features(self, x: Tensor) -> Tensor:
        """The conv blocks, layer by layer; with fused_blocks, instance norm + avg-pool blocks as one op (same maths)."""
        layers = list(self.features)
        for i in range(0, len(layers), 4):
            conv, norm, relu, pool = layers[i : i + 4]
            if (self.fused_blocks and isinstance(norm, InstanceNorm) and isinstance(pool, nn.AvgPool2d)
                    and block.block_applies(x, conv, norm.weight)):
                x = block.fused_block(x, conv, norm.weight, norm.bias, norm.eps, self.conv_dtype, self.cpu_kernels)
            else:
                x = pool(relu(norm(conv(x))))
        return x


class InstanceNorm(nn.Module):
    """Affine per-channel normalisation over (H, W) of each image; vmap- and double-backward-safe."""

    fast = True  # outside torch.func transforms, the hand-written derivatives of `fast.block` (same maths)

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        # group_norm with one channel per group is exactly instance norm
        if self.fast and block.norm_applies(x, self.weight):
            return block.instance_norm(x, self.weight, self.bias, self.eps)
        return F.group_norm(x, x.shape[-3], self.weight, self.bias, self.eps)


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer named by `norm` for `channels` feature maps."""
    if norm == "instance":
        return InstanceNorm(channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise PoddError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def make_pool(pool: str) -> nn.Module:
    """2x2 stride-2 average or max pooling."""
    if pool == "avg":
        return nn.AvgPool2d(2, 2)
    if pool == "max":
        return nn.MaxPool2d(2, 2)
    raise PoddError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")


class BasicBlock(nn.Module):
    """ResNet basic block: two conv3x3 with norm, identity or 1x1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          make_norm(norm, c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, stages of 2 blocks at base_width x (1, 2, 4, 8)."""

    def __init__(self, channels: int = 3, num_classes: int = 10, norm: str = "instance",
                 base_width: int = 64):
        super().__init__()
        w = base_width
        self.stem = nn.Sequential(nn.Conv2d(channels, w, 3, 1, 1, bias=False), make_norm(norm, w),
                                  nn.ReLU())
        blocks, c_in = [], w
        for i, c_out in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor, embed: bool = False) -> Tensor:
        """Logits, or with embed=True the pooled features before the classifier."""
        z = self.blocks(self.stem(x)).mean(dim=(-2, -1))
        return z if embed else self.classifier(z)


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """CIFAR-style VGG-11: conv3x3 -> norm -> ReLU stacks with 5 max-pools, then one linear layer."""

    def __init__(self, channels: int = 3, num_classes: int = 10, norm: str = "instance",
                 im_size: tuple[int, int] = (32, 32), base_width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for v in _VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c_out = v * base_width // 64
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), make_norm(norm, c_out), nn.ReLU()]
                c_in = c_out
        h, w = im_size
        if h < 32 or w < 32:
            raise PoddError(f"VGG-11 needs images of at least 32x32, got {h}x{w}")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in * (h >> 5) * (w >> 5), num_classes)

    def forward(self, x: Tensor, embed: bool = False) -> Tensor:
        """Logits, or with embed=True the flattened features before the classifier (DM, DREAM)."""
        z = self.features(x).flatten(1)
        return z if embed else self.classifier(z)


class AlexNet(nn.Module):
    """Small CIFAR-style AlexNet: five convs (5x5, 5x5, 3x3 x3) with three max-pools, one linear layer."""

    def __init__(self, channels: int = 3, num_classes: int = 10, norm: str = "none",
                 im_size: tuple[int, int] = (32, 32)):
        super().__init__()
        spec = ((128, 5, 4, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False),
                (192, 3, 1, True))  # (filters, kernel, padding, pool after)
        layers: list[nn.Module] = []
        c_in = channels
        h, w = im_size
        for c_out, k, p, pool in spec:
            layers += [nn.Conv2d(c_in, c_out, k, padding=p), make_norm(norm, c_out), nn.ReLU()]
            h, w = h + 2 * p - k + 1, w + 2 * p - k + 1
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            c_in = c_out
        if h < 1 or w < 1:
            raise PoddError(f"image size {im_size} is too small for AlexNet")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in * h * w, num_classes)

    def forward(self, x: Tensor, embed: bool = False) -> Tensor:
        """Logits, or with embed=True the flattened features before the classifier (DM, DREAM)."""
        z = self.features(x).flatten(1)
        return z if embed else self.classifier(z)


def default_depth(im_size: tuple[int, int]) -> int:
    """ConvNet depth of the paper: 3 below 64 pixels a side (32x32), 4 from 64 (64x64)."""
    return 3 if min(im_size) < 64 else 4


def make_model(
    arch: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int] | int,
    width: int = 128,
    depth: int | None = None,
    norm: str = "instance",
    pool: str = "avg",
) -> nn.Module:
    """Build a network by name; `width`, `depth` and `pool` apply to the ConvNet only."""
    if isinstance(im_size, int):
        im_size = (im_size, im_size)
    im_size = (int(im_size[0]), int(im_size[1]))
    if arch not in ARCHS:
        raise PoddError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if norm not in NORMS:
        raise PoddError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if channels < 1 or num_classes < 2 or min(im_size) < 1:
        raise PoddError(f"bad model shape: channels={channels}, num_classes={num_classes}, "
                        f"im_size={im_size}")
    if arch == "convnet":
        d = default_depth(im_size) if depth is None else depth
        return ConvNet(channels, num_classes, width, d, norm, pool, im_size)
    if arch == "resnet18":
        return ResNet18(channels, num_classes, norm)
    if arch == "vgg11":
        return VGG11(channels, num_classes, norm, im_size)
    return AlexNet(channels, num_classes, norm, im_size)


def is_vmappable(model: nn.Module) -> bool:
    """False when the model has batch norm with running stats (in-place buffer updates break vmap)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                   for m in model.modules())


def seeded_model(model_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """model_fn() initialised on the CPU from `seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_fn()


def fresh_params(model_fn: Callable[[], nn.Module], seed: int) -> dict[str, Tensor]:
    """Detached parameters of a freshly initialised model_fn() drawn from `seed`."""
    return {k: p.detach() for k, p in seeded_model(model_fn, seed).named_parameters()}


def seed_from(generator: torch.Generator) -> int:
    """Draw a 62-bit seed from a generator (to seed `fresh_params` from an RNG stream)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def stacked_fresh(
    model_fn: Callable[[], nn.Module], seeds: list[int], device: torch.device | str = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Parameters and buffers of len(seeds) fresh models stacked along a leading model axis."""
    if not seeds:
        raise PoddError("stacked_fresh needs at least one seed")
    params, buffers = torch.func.stack_module_state([seeded_model(model_fn, s) for s in seeds])
    return ({k: v.detach().to(device) for k, v in params.items()},
            {k: v.to(device) for k, v in buffers.items()})


def num_params(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_backend(model: nn.Module, fast: bool) -> nn.Module:
    """Turn the fast path (`podd_lib.fast`: fused blocks, compiled kernels, hand-written norm) off, or leave it."""
    if not fast:
        for m in model.modules():
            if isinstance(m, ConvNet):
                m.fused_blocks, m.cpu_kernels, m.conv_dtype = False, False, None
            elif isinstance(m, InstanceNorm):
                m.fast = False
    return model
