"""Contact sheets: each depth view the model sees, with its foveal weights overlaid in red, or its points
coloured by part with a legend; a top view of a scene with its objects."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .colors import part_colors
from .errors import InputError
from .files import atomic_write, image_save_options

OVERLAY_OPACITY = 0.6  # red strength at the peak foveal weight
LABEL_HEIGHT = 14  # pixels under each tile for its caption


def view_tiles(images: torch.Tensor, weights: Optional[torch.Tensor] = None) -> np.ndarray:
    """RGB tiles (V, S, S, 3) uint8 of depth views (V, 3, S, S) with weights (V, gh, gw) as a red overlay."""
    gray = images[:, 0].float()
    peak = gray.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    gray = (gray / peak).clamp(0, 1) if float(peak.max()) > 1 else gray.clamp(0, 1)
    rgb = gray[..., None].repeat(1, 1, 1, 3)
    if weights is not None:
        size = images.shape[-2:]
        w = F.interpolate(weights[:, None].float(), size=size, mode="nearest")[:, 0]
        w = (w / w.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]) * OVERLAY_OPACITY
        red = torch.tensor([1.0, 0.0, 0.0])
        rgb = rgb * (1 - w[..., None]) + red * w[..., None]
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def contact_sheet(tiles: np.ndarray, captions: Optional[Sequence[str]] = None, columns: int = 5) -> Image.Image:
    """One image holding all tiles (V, S, S, 3) in rows of `columns`, each with an optional caption."""
    v, s = tiles.shape[0], tiles.shape[1]
    columns = max(1, min(columns, v))
    rows = -(-v // columns)
    cell_h = s + (LABEL_HEIGHT if captions else 0)
    sheet = Image.new("RGB", (columns * s, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(v):
        x, y = (i % columns) * s, (i // columns) * cell_h
        sheet.paste(Image.fromarray(tiles[i]), (x, y))
        if captions:
            draw.text((x + 2, y + s + 1), captions[i][:40], fill="black")
    return sheet


def save_image(image: Image.Image, path) -> Path:
    """Write a picture atomically, in the format its suffix names, with the tool's mark (`files.made_by_pointfalip`)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image type '{path.suffix}'; use .png or .jpg")
    return atomic_write(path, lambda f: image.save(f, format=fmt, **image_save_options(fmt)))


def save_sheet(path, images: torch.Tensor, weights: Optional[torch.Tensor] = None,
               captions: Optional[Sequence[str]] = None, columns: int = 5) -> Path:
    """A contact sheet of depth views (V, 3, S, S) with their foveal weights (V, gh, gw) written to ``path``."""
    return save_image(contact_sheet(view_tiles(images, weights), captions, columns), path)


PART_DOT = 1  # a point is drawn as a (2 * PART_DOT + 1)-pixel square
LEGEND_SWATCH = 12  # side of a legend's colour square, pixels
LEGEND_ROW = 16  # height of a legend row, pixels


def part_tiles(images: torch.Tensor, pixels: torch.Tensor, visible: torch.Tensor, labels: torch.Tensor,
               colors: np.ndarray) -> np.ndarray:
    """RGB tiles ``(V, S, S, 3)`` uint8: depth views ``(V, 3, S, S)`` with each point seen in a view painted in
    its part's colour at its pixel. pixels: ``(V, N, 2)`` (row, col); visible: ``(V, N)``; labels: ``(N,)``."""
    tiles = torch.from_numpy(view_tiles(images)).clone()
    s = tiles.shape[1]
    palette = torch.as_tensor(colors, dtype=torch.uint8)
    view, point = visible.cpu().nonzero(as_tuple=True)
    rows, cols = pixels.cpu()[view, point].unbind(-1)
    color = palette[labels.cpu()[point]]
    for dr in range(-PART_DOT, PART_DOT + 1):
        for dc in range(-PART_DOT, PART_DOT + 1):
            tiles[view, (rows + dr).clamp(0, s - 1), (cols + dc).clamp(0, s - 1)] = color
    return tiles.numpy()


def legend(names: Sequence[str], colors: np.ndarray, width: int, counts: Optional[Sequence[int]] = None
           ) -> Image.Image:
    """A white strip ``width`` pixels wide with a colour square and a name (and count) for each part."""
    texts = [f"{n} ({c})" if counts is not None else str(n) for n, c in zip(names, counts or [None] * len(names))]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cells = [LEGEND_SWATCH + 6 + int(probe.textlength(t)) + 14 for t in texts]
    rows, x = [[]], 4
    for k, w in enumerate(cells):
        if rows[-1] and x + w > width:
            rows.append([])
            x = 4
        rows[-1].append((k, x))
        x += w
    strip = Image.new("RGB", (width, len(rows) * LEGEND_ROW + 4), "white")
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        y = 2 + r * LEGEND_ROW
        for k, x in row:
            draw.rectangle([x, y + 1, x + LEGEND_SWATCH, y + 1 + LEGEND_SWATCH], fill=tuple(int(c) for c in colors[k]))
            draw.text((x + LEGEND_SWATCH + 5, y + 1), texts[k], fill="black")
    return strip


def save_part_sheet(path, images: torch.Tensor, pixels: torch.Tensor, visible: torch.Tensor, labels: torch.Tensor,
                    names: Sequence[str], captions: Optional[Sequence[str]] = None, columns: int = 5) -> Path:
    """A contact sheet of depth views ``(V, 3, S, S)`` with the points coloured by part (see `part_tiles`) and a
    legend of the part ``names`` with their point counts, written to ``path``."""
    colors = part_colors(len(names))
    labels = torch.as_tensor(labels).reshape(-1).long()
    counts = torch.bincount(labels.cpu(), minlength=len(names)).tolist()
    sheet = contact_sheet(part_tiles(images, pixels, visible, labels, colors), captions, columns)
    key = legend(names, colors, sheet.width, counts)
    out = Image.new("RGB", (sheet.width, sheet.height + key.height), "white")
    out.paste(sheet, (0, 0))
    out.paste(key, (0, sheet.height))
    return save_image(out, path)


SCENE_PIXELS = 640  # side of the top view
BOX_COLOR = (220, 30, 30)


def save_scene(path, points: np.ndarray, objects: Sequence, up_axis: str = "z") -> Path:
    """A top view of a scene (looking down the up axis) with each `RecognizedObject`'s box and label."""
    up = "xyz".index(up_axis.lstrip("-"))
    u, v = [a for a in range(3) if a != up]
    pts = np.asarray(points, np.float64)[:, [u, v]]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    scale = (SCENE_PIXELS - 1) / max(float((hi - lo).max()), 1e-9)

    def pixel(xy):
        xy = (np.asarray(xy, np.float64) - lo) * scale
        return xy[..., 0], SCENE_PIXELS - 1 - xy[..., 1]  # image rows grow downward

    canvas = np.full((SCENE_PIXELS, SCENE_PIXELS, 3), 255, np.uint8)
    cols, rows = pixel(pts)
    canvas[rows.astype(int), cols.astype(int)] = (110, 110, 110)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        (c0, r0), (c1, r1) = pixel(np.asarray(obj.bbox_min)[[u, v]]), pixel(np.asarray(obj.bbox_max)[[u, v]])
        draw.rectangle([min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)], outline=BOX_COLOR, width=2)
        draw.text((min(c0, c1) + 2, min(r0, r1) - 12), f"{obj.label} {obj.probability:.0%}", fill=BOX_COLOR)
    return save_image(image, path)
