"""Analytic compute cost of an SSD (VGG16) network from its config, without torch.

The benchmark turns images/s into achieved GFLOP/s with these numbers, so they are derived from the
layer layout in docs/ssd.md ("Network") rather than measured: every convolution costs
``k * k * C_in * C_out * H_out * W_out`` multiply-accumulates (MACs). Pooling, ReLU, L2Norm and the
softmax are a rounding error next to that (< 0.1 %) and are left out, as is usual for quoted
GMAC figures. One MAC is two floating-point operations.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SSDConfig
from .layers import CONV4_3 as _CONV4_3
from .layers import EXTRAS as _EXTRAS
from .layers import VGG_BASE as _VGG_BASE


@dataclass(frozen=True)
class ConvCost:
    """One convolution of the network and what it costs for a single image."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    out_size: int  # square feature maps: H_out == W_out

    @property
    def macs(self) -> int:
        return self.kernel * self.kernel * self.in_channels * self.out_channels * self.out_size**2

    @property
    def params(self) -> int:
        """Weights plus one bias per output channel."""
        return self.kernel * self.kernel * self.in_channels * self.out_channels + self.out_channels


@dataclass(frozen=True)
class ModelCost:
    """Per-image cost of an SSD: convolutions in execution order, totals and the parts."""

    convs: tuple[ConvCost, ...]
    #: Learned parameters outside convolutions (the 512 L2Norm scales).
    other_params: int

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.convs)

    @property
    def params(self) -> int:
        return sum(c.params for c in self.convs) + self.other_params

    @property
    def gflop(self) -> float:
        """Floating-point operations per image in units of 1e9 (2 per MAC)."""
        return 2.0 * self.macs / 1e9

    def macs_by_part(self) -> dict[str, int]:
        """MACs of the VGG base, the extra layers and the loc/conf heads."""
        parts: dict[str, int] = {"vgg": 0, "extras": 0, "heads": 0}
        for c in self.convs:
            key = "heads" if c.name.startswith(("loc", "conf")) else c.name.split(".")[0]
            parts[key] += c.macs
        return parts


def _out(n: int, k: int, s: int = 1, p: int = 0, d: int = 1, ceil: bool = False) -> int:
    """Output length of a conv/pool window along one axis (PyTorch's rule, ceil_mode included)."""
    span = n + 2 * p - d * (k - 1) - 1
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    # A ceil-mode window that would start in the right padding is dropped.
    return out - 1 if (out - 1) * s >= n + p else out


def model_cost(config: SSDConfig) -> ModelCost:
    """The convolutions of the SSD described by ``config`` with their per-image cost."""
    if config.size not in _EXTRAS:
        raise ValueError(f"no SSD layout for input size {config.size} (known: {sorted(_EXTRAS)})")
    convs: list[ConvCost] = []
    sources: list[tuple[int, int]] = []  # (channels, size) fed to each head pair
    n, ch = config.size, 3
    for i, v in enumerate(_VGG_BASE):
        if v in ("M", "C"):
            n = _out(n, 2, 2, ceil=v == "C")
            continue
        assert isinstance(v, int)
        convs.append(ConvCost(f"vgg.{len(convs)}", ch, v, 3, _out(n, 3, 1, 1)))
        ch = v
        if i == _CONV4_3:
            sources.append((ch, n))
    n = _out(n, 3, 1, 1)  # pool5 keeps the size
    n = _out(n, 3, 1, 6, d=6)  # conv6, dilated
    convs.append(ConvCost("vgg.fc6", ch, 1024, 3, n))
    convs.append(ConvCost("vgg.fc7", 1024, 1024, 1, n))
    ch = 1024
    sources.append((ch, n))
    for j, (out_ch, k, s, p) in enumerate(_EXTRAS[config.size]):
        n = _out(n, k, s, p)
        convs.append(ConvCost(f"extras.{j}", ch, out_ch, k, n))
        ch = out_ch
        if j % 2 == 1:
            sources.append((ch, n))
    anchors = config.prior.boxes_per_location
    sizes = tuple(size for _, size in sources)
    if len(anchors) != len(sources) or sizes != tuple(config.prior.feature_maps):
        raise ValueError(
            f"SSD{config.size} produces feature maps {sizes}, prior config {config.prior.name!r} "
            f"says {tuple(config.prior.feature_maps)}"
        )
    for k, ((c, size), a) in enumerate(zip(sources, anchors)):
        convs.append(ConvCost(f"loc.{k}", c, a * 4, 3, size))
        convs.append(ConvCost(f"conf.{k}", c, a * config.num_classes, 3, size))
    return ModelCost(convs=tuple(convs), other_params=512)


def model_macs(config: SSDConfig) -> int:
    """Multiply-accumulates of one forward pass on one image."""
    return model_cost(config).macs


def model_params(config: SSDConfig) -> int:
    """Learned parameters (conv weights and biases plus the L2Norm scales)."""
    return model_cost(config).params
