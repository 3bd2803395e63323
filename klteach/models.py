"""The networks of the clustering loop: backbone -> projection head -> prototypes.

A backbone turns an input into a feature vector; the :class:`ProjectionHead` maps it to
an embedding ``z`` of unit norm; :class:`Prototypes` holds the K cluster weight vectors
``w_k``, also of unit norm, and returns the cosine scores ``w_k·z``. The student's
posterior is then ``softmax_k(w_k·z / τ)`` (eq. 6), which is Bayes' posterior (1) of an
isotropic Gaussian mixture on the unit sphere.

Why unit norm: the gradients (5) of the cross-entropy are sums weighted by ``w_k`` and by
``z - w_k``, so vectors with large norms dominate them; fixing every norm at one removes
that and makes ``‖z - w_k‖² = 2 - 2 w_k·z``, which turns (1) into (6).

Backbones (each has an ``out_features`` attribute, the length of its feature vector):

* :class:`MLP` for toy vectors on the sphere and the 8x8 digits;
* :class:`SmallCNN`, a plain 8-layer conv net cheap enough to train on a laptop CPU;
* :class:`ResNet18Cifar`, the standard ResNet-18 CIFAR variant for the GPU.

:func:`build_model` picks and wires them; the trainer only calls that.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .theory import centre_weights

Architecture = Literal["auto", "mlp", "cnn", "resnet18"]
"""Values accepted by :func:`build_model` for ``arch``."""
ARCHITECTURES: tuple[Architecture, ...] = get_args(Architecture)

SMALL_IMAGE_SIDE = 16
"""``arch="auto"`` flattens images smaller than this (e.g. 8x8 digits) into an MLP."""


def _check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


# ---------------------------------------------------------------- backbones

class MLP(nn.Module):
    """Backbone for vectors and tiny images: flatten, then ``depth`` x (Linear, BatchNorm, ReLU).

    The input is flattened, so ``(N, 3)`` toy vectors and ``(N, 1, 8, 8)`` digits both work.
    ``depth`` counts the linear layers; the last one has ``out_features`` units.
    """

    def __init__(self, in_features: int, hidden: int = 256, out_features: int = 256,
                 depth: int = 2) -> None:
        super().__init__()
        _check_positive_int(in_features, "in_features")
        _check_positive_int(hidden, "hidden")
        _check_positive_int(depth, "depth")
        self.out_features = _check_positive_int(out_features, "out_features")
        widths = [in_features] + [hidden] * (depth - 1) + [out_features]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out, bias=False),
                       nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, ...)`` -> ``(N, out_features)``."""
        return self.layers(torch.flatten(x, 1))


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """A 3x3 convolution (no bias: the BatchNorm has one), BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A plain conv net for CPUs: four stages of two 3x3 conv layers, then global average pool.

    Channels ``width, 2·width, 4·width, 8·width``; stages 2-4 start with a stride-2 conv,
    so a 32x32 image is seen at 32, 16, 8 and 4 pixels. With ``width=32`` that is about
    52.8 M multiply-adds per 32x32 image (~1/10 of :class:`ResNet18Cifar`) and a
    ``8·width = 256``-d feature vector. Any image size works (the pool is global).
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(width, "width")
        channels = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [conv_bn_relu(in_channels, channels[0])]
        layers.append(conv_bn_relu(channels[0], channels[0]))
        for width_in, width_out in zip(channels[:-1], channels[1:]):
            layers.append(conv_bn_relu(width_in, width_out, stride=2))
            layers.append(conv_bn_relu(width_out, width_out))
        self.features = nn.Sequential(*layers)
        self.out_features = channels[-1]

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 8·width)``."""
        return self.features(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """ResNet-18 (He et al. 2016), CIFAR variant: 3x3 stride-1 stem, no max-pool, no classifier.

    Stages of two :class:`BasicBlock` with 64, 128, 256, 512 channels (strides 1, 2, 2, 2),
    so a 32x32 image ends as a 512 x 4 x 4 map, averaged to a 512-d feature vector.
    11,168,832 parameters for ``in_channels=3``.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        width_in = 64
        for width_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(width_in, width_out, stride),
                                        BasicBlock(width_out, width_out, 1)))
            width_in = width_out
        self.stages = nn.Sequential(*stages)
        self.out_features = 512

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's map before pooling: ``(N, 512, H/8, W/8)``."""
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 512)``."""
        return self.feature_map(x).mean(dim=(2, 3))


# ---------------------------------------------------------------- head and prototypes

class ProjectionHead(nn.Module):
    """MLP from backbone features to the unit-norm embedding ``z`` (eq. 5 -> 6).

    ``layers`` linear layers; all but the last are followed by BatchNorm and ReLU. The
    output is divided by its norm (in float32, so bf16 autocast cannot spoil the norm).
    """

    def __init__(self, in_features: int, hidden: int = 512, out_features: int = 64,
                 layers: int = 2) -> None:
        super().__init__()
        _check_positive_int(in_features, "in_features")
        _check_positive_int(hidden, "hidden")
        _check_positive_int(layers, "layers")
        self.out_features = _check_positive_int(out_features, "out_features")
        widths = [in_features] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(width_in, width_out, bias=False),
                       nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(widths[-1], out_features))
        self.mlp = nn.Sequential(*blocks)

    def forward(self, features: Tensor) -> Tensor:
        """``(N, in_features)`` -> unit-norm ``z`` of shape ``(N, out_features)``, float32."""
        return F.normalize(self.mlp(features).float(), dim=-1)


class Prototypes(nn.Module):
    """The K cluster weight vectors ``w_k`` on the unit sphere; forward gives cosine scores ``w_k·z``.

    The student's posterior is ``softmax(scores / τ)`` (eq. 6), which needs ``‖w_k‖ = 1``;
    the stored ``weight`` may have any norm and is normalised on every forward pass, so the
    vectors used are always unit norm, whatever the optimiser does to ``weight``.

    ``learnable=False`` keeps K random unit vectors fixed (a buffer, never updated): the
    paper's "fixed weight vectors". ``centred=True`` makes the mean weight vector (eq. 19)
    vanish, as (20) assumes: each vector is normalised, the mean is subtracted, and each is
    normalised again. The last step keeps (6) exact; it leaves a mean of the order of the
    spread of the centred norms squared, far smaller than before centring but not exactly 0.

    Scores are computed in float32 with autocast off: they are divided by temperatures
    as small as 0.01, which bf16's 8-bit mantissa would turn into noise.
    """

    weight: Tensor

    def __init__(self, dim: int, clusters: int, learnable: bool = True, centred: bool = False) -> None:
        super().__init__()
        _check_positive_int(dim, "dim")
        if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 2:
            raise ValueError(f"clusters (K) must be an integer >= 2, got {clusters!r}")
        self.dim, self.clusters = dim, clusters
        self.learnable, self.centred = bool(learnable), bool(centred)
        initial = F.normalize(torch.randn(clusters, dim), dim=-1)
        if self.learnable:
            self.weight = nn.Parameter(initial)
        else:
            self.register_buffer("weight", initial)

    @property
    def unit_weights(self) -> Tensor:
        """The ``(K, D)`` unit-norm (and, if ``centred``, centred) vectors the scores use."""
        w = F.normalize(self.weight.float(), dim=-1)
        if self.centred:
            w = F.normalize(centre_weights(w), dim=-1)
        return w

    def forward(self, z: Tensor) -> Tensor:
        """Cosine scores ``z @ ŵᵀ``, shape ``(N, K)``, float32; ``z`` should be unit norm."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return z.float() @ self.unit_weights.T

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, clusters={self.clusters}, "
                f"learnable={self.learnable}, centred={self.centred}")


class ClusteringModel(nn.Module):
    """Backbone -> projection head -> unit-norm ``z`` -> cosine scores against the prototypes."""

    def __init__(self, backbone: nn.Module, head: ProjectionHead, prototypes: Prototypes) -> None:
        super().__init__()
        self.backbone, self.head, self.prototypes = backbone, head, prototypes

    def embed(self, x: Tensor) -> Tensor:
        """The unit-norm embedding ``z(x)``, shape ``(N, D)``."""
        return self.head(self.backbone(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, scores)``: the embedding and its cosine scores ``w_k·z`` (logits of eq. 6 times τ)."""
        z = self.embed(x)
        return z, self.prototypes(z)


# ---------------------------------------------------------------- construction

def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``(D,)`` for vectors or ``(C, H, W)`` for images, all positive ints; else ``ValueError``."""
    shape = tuple(input_shape)
    if len(shape) not in (1, 3) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"input_shape must be (D,) for vectors or (C, H, W) for images, "
                         f"with positive integer sizes; got {input_shape!r}")
    return shape


def choose_architecture(input_shape: Sequence[int]) -> Literal["mlp", "cnn"]:
    """What ``arch="auto"`` means: ``"mlp"`` for vectors and small images (8x8 digits), else ``"cnn"``.

    The trainer asks for ``"resnet18"`` explicitly when it runs on a GPU.
    """
    shape = _check_input_shape(input_shape)
    if len(shape) == 1 or min(shape[1:]) < SMALL_IMAGE_SIDE:
        return "mlp"
    return "cnn"


def check_architecture(arch: str) -> Architecture:
    """Return ``arch`` or raise ``ValueError`` naming the allowed architectures."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    return cast(Architecture, arch)


def build_backbone(arch: Architecture, input_shape: Sequence[int], width: int = 32) -> MLP | SmallCNN | ResNet18Cifar:
    """The backbone named by ``arch`` (one of :data:`ARCHITECTURES`) for inputs of ``input_shape``;
    ``width`` is the first stage's channels of :class:`SmallCNN` (other backbones ignore it)."""
    arch = check_architecture(arch)
    shape = _check_input_shape(input_shape)
    if arch == "auto":
        arch = choose_architecture(shape)
    if arch == "mlp":
        return MLP(int(torch.Size(shape).numel()))
    if len(shape) != 3:
        raise ValueError(f"arch {arch!r} needs image input (C, H, W); got input_shape {shape!r}; "
                         f"use arch 'mlp' or 'auto' for vectors")
    return SmallCNN(shape[0], width) if arch == "cnn" else ResNet18Cifar(shape[0])


def build_model(arch: Architecture, input_shape: Sequence[int], clusters: int, dim: int = 64,
                hidden: int = 512, learnable_prototypes: bool = True,
                centred_prototypes: bool = False, width: int = 32) -> ClusteringModel:
    """Backbone for ``input_shape`` + :class:`ProjectionHead` to ``dim`` + K = ``clusters`` prototypes.

    ``arch``: ``"mlp"``, ``"cnn"`` (:class:`SmallCNN`), ``"resnet18"`` (:class:`ResNet18Cifar`)
    or ``"auto"`` (:func:`choose_architecture`). ``input_shape`` is one sample's shape without
    the batch axis: ``(3,)`` toy vectors, ``(1, 8, 8)`` digits, ``(3, 32, 32)`` CIFAR-10.
    ``hidden`` is the projection head's hidden width; ``width`` the channels of the first stage of
    :class:`SmallCNN` (``arch="cnn"``; 16 costs a quarter of 32). Initialisation draws from torch's
    global generator, so ``torch.manual_seed`` makes it repeatable.
    """
    prototypes = Prototypes(dim, clusters, learnable_prototypes, centred_prototypes)
    backbone = build_backbone(arch, input_shape, width)
    head = ProjectionHead(backbone.out_features, hidden, dim)
    return ClusteringModel(backbone, head, prototypes)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
