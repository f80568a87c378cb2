"""SSD300/SSD512 with a VGG16 base, laid out exactly like ssd.pytorch checkpoints (docs/ssd.md, "Network").

The module tree gives state-dict keys ``vgg.{N}.*``, ``L2Norm.weight``, ``extras.{i}.*``, ``loc.{k}.*``
and ``conf.{k}.*`` (71 tensors for SSD300) so that ssd.pytorch files load without renaming. The head
layout (sources, anchors per cell) is derived from :class:`ssd_deploy.config.SSDConfig` and checked
against the convolution arithmetic when the model is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import SSDConfig
from ..layers import EXTRAS as _EXTRAS
from ..layers import VGG_BASE as _VGG_BASE
from ..priors import prior_boxes

__all__ = [
    "L2Norm",
    "SSD",
    "init_weights",
    "count_parameters",
    "UntrainedWeightsWarning",
    "warn_untrained",
    "PHASES",
    "SIZES",
]

PHASES = ("train", "test")
SIZES = (300, 512)

#: Index of the ReLU after conv4_3; its output (before the next pool) feeds L2Norm as source 0.
CONV4_3_RELU = 22
#: Number of modules in the VGG base list.
VGG_LEN = 35


class UntrainedWeightsWarning(UserWarning):
    """A model is used without trained weights; its detections carry no information."""


def warn_untrained(what: str = "the SSD model", stacklevel: int = 3) -> None:
    """The single place that tells a user their detections will be meaningless."""
    warnings.warn(
        f"{what} has no trained weights (seeded random init): detections will be meaningless",
        UntrainedWeightsWarning,
        stacklevel=stacklevel,
    )


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (ParseNet, SSD conv4_3).

    ``out = weight[c] * x / (sqrt(sum_c x^2) + eps)``; ``eps`` is added after the square root as in
    ssd.pytorch. Written with Pow/ReduceSum/Sqrt/Add/Div/Mul so the exported ONNX nodes can be found
    (and kept in FP32) by the precision tooling: the sum of 512 squares overflows FP16.
    """

    def __init__(self, n_channels: int = 512, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.scale = float(scale)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.full((n_channels,), self.scale))
        # eps as a [1,1,1,1] tensor, not a Python scalar: the ONNX exporter's optimizer (onnxscript
        # "x + 0" rule, abs_tol 1e-8) deletes an Add of a scalar 1e-10, and an all-zero conv4_3 pixel
        # then gives 0/0 = NaN in the exported graph. The rule only matches scalars.
        self.register_buffer("eps_tensor", torch.full((1, 1, 1, 1), self.eps), persistent=False)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(self.scale)

    def forward(self, x: Tensor) -> Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps_tensor
        return self.weight.view(1, -1, 1, 1) * (x / norm)

    def extra_repr(self) -> str:
        return f"{self.n_channels}, scale={self.scale}, eps={self.eps}"


def _conv_out(n: int, k: int, s: int = 1, p: int = 0, d: int = 1, ceil: bool = False) -> int:
    """Spatial output size of a conv/pool along one axis (PyTorch's formula)."""
    span = n + 2 * p - d * (k - 1) - 1
    out = -(-span // s) + 1 if ceil else span // s + 1
    # PyTorch drops a ceil-mode window that would start inside the right padding.
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def _vgg_layers() -> list[nn.Module]:
    """The 35 base modules (indices match ssd.pytorch's ``vgg.N`` keys)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG_BASE:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    layers += [
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
        nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),
        nn.ReLU(inplace=True),
    ]
    assert len(layers) == VGG_LEN
    return layers


def _layer_out(n: int, layer: nn.Module) -> int:
    if isinstance(layer, nn.Conv2d):
        return _conv_out(n, layer.kernel_size[0], layer.stride[0], int(layer.padding[0]), layer.dilation[0])
    if isinstance(layer, nn.MaxPool2d):
        k, s, p = (
            int(v if isinstance(v, int) else v[0]) for v in (layer.kernel_size, layer.stride, layer.padding)
        )
        return _conv_out(n, k, s, p, ceil=bool(layer.ceil_mode))
    return n


class SSD(nn.Module):
    """Single Shot MultiBox Detector with a VGG16 base (ssd.pytorch layout).

    ``phase="train"``: ``forward`` returns ``(loc [B,P,4], conf_logits [B,P,C], priors [P,4])``.
    ``phase="test"``: ``forward`` returns the reference Detect output ``[B, C, top_k, 5]`` computed
    on softmax scores with ``config.variances`` and ``config.detect``.
    """

    def __init__(self, phase: str, config: SSDConfig) -> None:
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if config.size not in _EXTRAS:
            raise ValueError(f"SSD size must be one of {SIZES}, got {config.size}")
        self.phase = phase
        self.config = config
        self.size = config.size
        self.num_classes = config.num_classes
        #: Set by the checkpoint loader (a ``weights.LoadReport``); ``None`` for a fresh model.
        self.load_report: Any = None

        self.vgg = nn.ModuleList(_vgg_layers())
        self.L2Norm = L2Norm(512, 20.0)

        extras: list[nn.Module] = []
        in_ch = 1024
        for out_ch, k, s, p in _EXTRAS[config.size]:
            extras.append(nn.Conv2d(in_ch, out_ch, kernel_size=k, stride=s, padding=p))
            in_ch = out_ch
        self.extras = nn.ModuleList(extras)

        src_channels = [512, 1024] + [c.out_channels for c in extras[1::2]]  # type: ignore[union-attr]
        src_sizes = self._source_sizes()
        anchors = config.prior.boxes_per_location
        fmaps = config.prior.feature_maps
        if len(src_channels) != len(anchors):
            raise ValueError(
                f"SSD{config.size} has {len(src_channels)} sources, prior config "
                f"{config.prior.name!r} describes {len(anchors)}"
            )
        if tuple(src_sizes) != tuple(fmaps):
            raise ValueError(
                f"SSD{config.size} feature maps are {tuple(src_sizes)}, prior config "
                f"{config.prior.name!r} says {tuple(fmaps)}"
            )
        self.anchors_per_location: tuple[int, ...] = tuple(anchors)
        self.source_channels: tuple[int, ...] = tuple(src_channels)
        self.loc = nn.ModuleList(
            nn.Conv2d(c, a * 4, kernel_size=3, padding=1) for c, a in zip(src_channels, anchors)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, a * config.num_classes, kernel_size=3, padding=1)
            for c, a in zip(src_channels, anchors)
        )

        priors = torch.from_numpy(prior_boxes(config.prior))
        n_priors = sum(f * f * a for f, a in zip(src_sizes, anchors))
        if priors.shape != (n_priors, 4) or n_priors != config.num_priors:
            raise ValueError(
                f"prior config {config.prior.name!r} gives {tuple(priors.shape)} priors, the heads "
                f"produce {n_priors} rows"
            )
        # Not persistent: priors follow the config, and checkpoints stay the 71 ssd.pytorch tensors.
        self.register_buffer("priors", priors, persistent=False)

    @property
    def num_priors(self) -> int:
        return int(self.priors.shape[0])

    def _source_sizes(self) -> list[int]:
        n = self.size
        sizes = []
        for i, layer in enumerate(self.vgg):
            n = _layer_out(n, layer)
            if i == CONV4_3_RELU:
                sizes.append(n)
        sizes.append(n)
        for i, conv in enumerate(self.extras):
            n = _layer_out(n, conv)
            if i % 2 == 1:
                sizes.append(n)
        return sizes

    def sources(self, x: Tensor) -> list[Tensor]:
        """Feature maps fed to the heads, in source order (conv4_3 after L2Norm, conv7, extras)."""
        for layer in self.vgg[: CONV4_3_RELU + 1]:
            x = layer(x)
        out = [self.L2Norm(x)]
        for layer in self.vgg[CONV4_3_RELU + 1 :]:
            x = layer(x)
        out.append(x)
        for i, conv in enumerate(self.extras):
            x = F.relu(conv(x), inplace=True)
            if i % 2 == 1:
                out.append(x)
        return out

    def forward_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc [B, P, 4], conf_logits [B, P, C])``; prior index = offset_k + (y*F_k + x)*A_k + a."""
        batch = x.shape[0]
        locs, confs = [], []
        for src, loc, conf in zip(self.sources(x), self.loc, self.conf):
            # NCHW -> NHWC puts the A_k anchors of one cell next to each other, as the priors are.
            locs.append(loc(src).permute(0, 2, 3, 1).flatten(1))
            confs.append(conf(src).permute(0, 2, 3, 1).flatten(1))
        loc_out = torch.cat(locs, dim=1).view(batch, -1, 4)
        conf_out = torch.cat(confs, dim=1).view(batch, -1, self.num_classes)
        return loc_out, conf_out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | Tensor:
        loc, conf = self.forward_heads(x)
        if self.phase == "train":
            return loc, conf, self.priors
        # Imported here so the network builds and exports without the reference Detect module.
        from .detect import detect_reference

        return detect_reference(
            loc, F.softmax(conf, dim=-1), self.priors, self.config.variances, self.config.detect
        )

    def extra_repr(self) -> str:
        return (
            f"phase={self.phase!r}, size={self.size}, num_classes={self.num_classes}, "
            f"priors={self.num_priors}, prior={self.config.prior.name!r}"
        )


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded init: xavier-uniform conv weights, zero biases, L2Norm scale back to its init (20).

    Values are drawn on the CPU from a private generator in module order, so the same seed gives the
    same tensors whatever the global RNG state, device or machine. Returns ``model``.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            w = torch.empty(module.weight.shape, dtype=torch.float32)
            nn.init.xavier_uniform_(w, generator=gen)
            module.weight.copy_(w)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, L2Norm):
            module.reset_parameters()
    return model


def count_parameters(model: nn.Module, names: Sequence[str] | None = None) -> int:
    """Number of parameters (all, or those whose name starts with one of ``names``)."""
    return sum(p.numel() for n, p in model.named_parameters() if names is None or n.startswith(tuple(names)))
