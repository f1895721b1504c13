"""The one palette of the tool: part colours of `pointfalip segment`, label colours of scenes (render, Foxglove).

Tableau's ten colours without its grey (grey marks points that belong to no object), then, past them, hues spread
by the golden angle. A label listed in a label set takes the colour of its position; any other label one chosen by
a CRC-32 of its name, the same in every run and process.
"""
from __future__ import annotations

import zlib
from typing import Optional, Sequence

import numpy as np

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207))
_GOLDEN = 0.618033988749895  # hue step past the palette: consecutive colours stay far apart


def part_colors(count: int) -> np.ndarray:
    """``(count, 3)`` uint8 RGB, one distinct colour a part (the same part index always gets the same colour)."""
    colors = list(PALETTE[:count])
    for k in range(len(colors), count):
        hue = (k * _GOLDEN) % 1.0
        r, g, b = (np.clip(np.abs((hue * 6 + off) % 6 - 3) - 1, 0, 1) for off in (0, 4, 2))
        colors.append(tuple(int(round(40 + 180 * c)) for c in (r, g, b)))
    return np.asarray(colors, dtype=np.uint8).reshape(count, 3)


def label_color(label: str, labels: Optional[Sequence[str]] = None) -> tuple[int, int, int]:
    """RGB (0-255) of a label: the palette colour of its position in ``labels`` when it is listed, else one
    chosen by a CRC-32 of the label (the same in every run and process)."""
    if labels is not None and label in labels:
        index = list(labels).index(label)
    else:
        index = zlib.crc32(label.encode("utf-8"))
    return tuple(int(v) for v in PALETTE[index % len(PALETTE)])
