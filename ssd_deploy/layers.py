"""The layer tables of SSD's VGG16 base and extra layers (docs/ssd.md, "Network"), read by both the
PyTorch model (:mod:`ssd_deploy.model.ssd`) and the analytic cost model (:mod:`ssd_deploy.cost`).
Plain tuples: no numpy, no torch."""

from __future__ import annotations

#: VGG16 base: numbers are 3x3 pad-1 convs + ReLU, "M" a 2x2 max-pool and "C" the same pool with
#: ceil_mode (75 -> 38 for SSD300). pool5, conv6 (dilated) and conv7 follow it.
VGG_BASE: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
#: Index in :data:`VGG_BASE` of conv4_3, whose output (after L2Norm) is source 0.
CONV4_3 = 12
#: Channels of conv6/conv7 (source 1 is conv7's output).
FC_CHANNELS = 1024

#: Extra layers per input size as (out_channels, kernel, stride, padding); a ReLU follows every
#: conv and the odd-indexed ones are sources 2, 3, ...
EXTRAS: dict[int, tuple[tuple[int, int, int, int], ...]] = {
    300: (
        (256, 1, 1, 0), (512, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1),
        (128, 1, 1, 0), (256, 3, 1, 0), (128, 1, 1, 0), (256, 3, 1, 0),
    ),
    512: (
        (256, 1, 1, 0), (512, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1),
        (128, 1, 1, 0), (256, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1),
        (128, 1, 1, 0), (256, 4, 1, 1),
    ),
}  # fmt: skip


def source_channels(size: int) -> tuple[int, ...]:
    """Channels of each source feature map: conv4_3, conv7, then the odd extras."""
    return (VGG_BASE[CONV4_3], FC_CHANNELS) + tuple(c for c, *_ in EXTRAS[size][1::2])
