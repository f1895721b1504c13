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

LEGEND_SWATCH = 12  # side of a legend's colour square, pixels
LEGEND_ROW = 18  # height of a legend row, pixels
LEGEND_WIDTH = 760  # the foveal legend's width when the sheet is narrower (its text is one line a row)
TINT_OPACITY = 0.3  # red strength of the tint at the peak foveal weight: the depth shading stays readable under it
OUTLINE = (220, 20, 20)  # the foveal region's outline
OUTLINE_WIDTH = 2  # pixels
LABEL_HEIGHT = 18  # pixels under each tile for its caption
TILE_GAP = 6  # white pixels between the tiles of a row
CAPTION_SIZE = 13  # caption and legend font size, pixels


def font(size: int = CAPTION_SIZE):
    """Pillow's default font at ``size`` pixels (its small bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _outline(region: torch.Tensor, width: int = OUTLINE_WIDTH) -> torch.Tensor:
    """(V, S, S) bool: the pixels of ``region`` within ``width`` pixels of a pixel outside it (or of the border)."""
    outside = F.pad((~region).float()[:, None], (width,) * 4, value=1.0)
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1)[:, 0] > 0
    return region & near_outside


def view_tiles(images: torch.Tensor, weights: Optional[torch.Tensor] = None) -> np.ndarray:
    """RGB tiles (V, S, S, 3) uint8 of depth views (V, 3, S, S): the grey depth image the model sees, and with
    foveal weights (V, gh, gw) their region (the patches whose weight is above zero) outlined in red over a light
    red tint growing with the weight, so that the depth stays visible under it."""
    gray = images[:, 0].float()
    peak = gray.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    gray = (gray / peak).clamp(0, 1) if float(peak.max()) > 1 else gray.clamp(0, 1)
    rgb = gray[..., None].repeat(1, 1, 1, 3)
    if weights is not None:
        size = images.shape[-2:]
        w = F.interpolate(weights[:, None].float(), size=size, mode="nearest")[:, 0]
        w = w / w.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
        red = torch.tensor(OUTLINE, dtype=torch.float32) / 255
        tint = (w * TINT_OPACITY)[..., None]
        rgb = rgb * (1 - tint) + red * tint
        rgb[_outline(w > 0)] = red
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def contact_sheet(tiles: np.ndarray, captions: Optional[Sequence[str]] = None, columns: int = 5) -> Image.Image:
    """One image holding all tiles (V, S, S, 3) in rows of `columns`, each with an optional caption."""
    v, s = tiles.shape[0], tiles.shape[1]
    columns = max(1, min(columns, v))
    rows = -(-v // columns)
    cell_h = s + (LABEL_HEIGHT if captions else 0)
    sheet = Image.new("RGB", (columns * (s + TILE_GAP) - TILE_GAP, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    text_font = font()
    for i in range(v):
        x, y = (i % columns) * (s + TILE_GAP), (i // columns) * cell_h
        sheet.paste(Image.fromarray(tiles[i]), (x, y))
        if captions:
            draw.text((x + 3, y + s + 2), _fit(draw, captions[i][:40], s - 4, text_font), fill="black",
                      font=text_font)
    return sheet


def _fit(draw, text: str, width: int, text_font) -> str:
    """``text`` shortened with an ellipsis until it is at most ``width`` pixels wide (captions of small tiles)."""
    while len(text) > 1 and draw.textlength(text, font=text_font) > width:
        text = text[:-2] + "…"
    return text


def _foveal_legend(width: int) -> Image.Image:
    """The key of a contact sheet with foveal masks: what the grey, the outline and the tint mean."""
    text_font = font()
    strip = Image.new("RGB", (width, LEGEND_ROW * 2 + 6), "white")
    draw = ImageDraw.Draw(strip)
    x, y = 6, 4
    for k in range(LEGEND_SWATCH * 3):  # a grey ramp: the depth view
        level = int(255 * (1 - k / (LEGEND_SWATCH * 3)))
        draw.line([(x + k, y + 2), (x + k, y + 2 + LEGEND_SWATCH)], fill=(level, level, level))
    x += LEGEND_SWATCH * 3 + 5
    text = "depth view as the model sees it (white: empty)"
    draw.text((x, y), text, fill="black", font=text_font)
    x += int(draw.textlength(text, font=text_font)) + 16
    draw.rectangle([x, y + 2, x + LEGEND_SWATCH, y + 2 + LEGEND_SWATCH], outline=OUTLINE, width=OUTLINE_WIDTH)
    draw.text((x + LEGEND_SWATCH + 5, y), "foveal region: patches whose CLS attention gets FALIP's bias", fill="black",
              font=text_font)
    y += LEGEND_ROW
    x = 6
    for k in range(LEGEND_SWATCH * 3):  # the tint from no weight to the peak weight, over white
        a = TINT_OPACITY * k / (LEGEND_SWATCH * 3)
        colour = tuple(int(round(255 * (1 - a) + c * a)) for c in OUTLINE)
        draw.line([(x + k, y + 2), (x + k, y + 2 + LEGEND_SWATCH)], fill=colour)
    draw.text((x + LEGEND_SWATCH * 3 + 5, y), "red tint: the bias's weight (0 to its peak); the depth stays "
              "visible under it", fill="black", font=text_font)
    return strip


def with_legend(sheet: Image.Image, key: Image.Image) -> Image.Image:
    """``sheet`` with ``key`` under it (as wide as the wider of the two)."""
    out = Image.new("RGB", (max(sheet.width, key.width), sheet.height + key.height), "white")
    out.paste(sheet, (0, 0))
    out.paste(key, (0, sheet.height))
    return out


def save_image(image: Image.Image, path) -> Path:
    """Write a picture atomically, in the format its suffix names, with the tool's mark (`files.made_by_pointfalip`)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image type '{path.suffix}'; use .png or .jpg")
    return atomic_write(path, lambda f: image.save(f, format=fmt, **image_save_options(fmt)))


def save_sheet(path, images: torch.Tensor, weights: Optional[torch.Tensor] = None,
               captions: Optional[Sequence[str]] = None, columns: int = 5) -> Path:
    """A contact sheet of depth views (V, 3, S, S) with their foveal weights (V, gh, gw) written to ``path``; with
    weights, a legend under it (`view_tiles` says what is drawn)."""
    sheet = contact_sheet(view_tiles(images, weights), captions, columns)
    if weights is not None:
        sheet = with_legend(sheet, _foveal_legend(max(sheet.width, LEGEND_WIDTH)))
    return save_image(sheet, path)


PART_DOT = 1  # a point is drawn as a (2 * PART_DOT + 1)-pixel square


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
    cells = [LEGEND_SWATCH + 6 + int(probe.textlength(t, font=font())) + 14 for t in texts]
    rows, x = [[]], 4
    for k, w in enumerate(cells):
        if rows[-1] and x + w > width:
            rows.append([])
            x = 4
        rows[-1].append((k, x))
        x += w
    strip = Image.new("RGB", (width, len(rows) * LEGEND_ROW + 4), "white")
    draw = ImageDraw.Draw(strip)
    text_font = font()
    for r, row in enumerate(rows):
        y = 2 + r * LEGEND_ROW
        for k, x in row:
            draw.rectangle([x, y + 2, x + LEGEND_SWATCH, y + 2 + LEGEND_SWATCH], fill=tuple(int(c) for c in colors[k]))
            draw.text((x + LEGEND_SWATCH + 5, y), texts[k], fill="black", font=text_font)
    return strip


def save_part_sheet(path, images: torch.Tensor, pixels: torch.Tensor, visible: torch.Tensor, labels: torch.Tensor,
                    names: Sequence[str], captions: Optional[Sequence[str]] = None, columns: int = 5) -> Path:
    """A contact sheet of depth views ``(V, 3, S, S)`` with the points coloured by part (see `part_tiles`) and a
    legend of the part ``names`` with their point counts, written to ``path``."""
    colors = part_colors(len(names))
    labels = torch.as_tensor(labels).reshape(-1).long()
    counts = torch.bincount(labels.cpu(), minlength=len(names)).tolist()
    sheet = contact_sheet(part_tiles(images, pixels, visible, labels, colors), captions, columns)
    return save_image(with_legend(sheet, legend(names, colors, sheet.width, counts)), path)


SCENE_PIXELS = 640  # side of the top view's plot, pixels
SCENE_MARGIN = (64, 34, 20, 48)  # left, top, right, bottom: room for the axes, their labels and the title
BACKGROUND_POINT = (212, 212, 212)  # points of no object (the support plane, outliers): faint
AXIS_COLOR = (90, 90, 90)
TAG_SIZE = 15  # object tags' font size, pixels


def _tick_step(span: float, ticks: int = 6) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks over ``span``."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def save_scene(path, points: np.ndarray, objects: Sequence, up_axis: str = "z") -> Path:
    """A top view of a scene (looking down the up axis), in metres: the other points faint, each `RecognizedObject`
    in its label's colour with its box and a tag ``#i label prob`` (``i`` its row in the command's table, and its
    track id when tracked), ticks on both axes, a title."""
    from .colors import label_color

    up = "xyz".index(up_axis.lstrip("-"))
    u, v = [a for a in range(3) if a != up]
    pts = np.asarray(points, np.float64).reshape(-1, 3)[:, [u, v]]
    pts = pts[np.isfinite(pts).all(axis=1)]
    lo, hi = (pts.min(axis=0), pts.max(axis=0)) if len(pts) else (np.zeros(2), np.ones(2))  # an empty frame: blank
    span = max(float((hi - lo).max()), 1e-9)
    lo = lo - (span - (hi - lo)) / 2  # centre the shorter side: one scale for both axes
    scale = (SCENE_PIXELS - 1) / span
    left, top, right, bottom = SCENE_MARGIN

    def pixel(xy):
        xy = (np.asarray(xy, np.float64) - lo) * scale
        return left + xy[..., 0], top + SCENE_PIXELS - 1 - xy[..., 1]  # image rows grow downward

    width, height = left + SCENE_PIXELS + right, top + SCENE_PIXELS + bottom
    canvas = np.full((height, width, 3), 255, np.uint8)
    cols, rows = pixel(pts)
    canvas[rows.astype(int), cols.astype(int)] = BACKGROUND_POINT
    labels = list(dict.fromkeys(str(o.display_label) for o in objects))
    colours = [label_color(str(o.display_label), labels) for o in objects]
    for obj, colour in zip(objects, colours):  # object points as 2x2 dots over the faint ones
        index = np.asarray(getattr(obj, "indices", []), np.int64)
        r, c = rows[index].astype(int), cols[index].astype(int)
        for dr in (0, 1):
            for dc in (0, 1):
                canvas[np.minimum(r + dr, height - 1), np.minimum(c + dc, width - 1)] = colour
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    small, tag_font = font(), font(TAG_SIZE)
    draw.rectangle([left - 1, top - 1, left + SCENE_PIXELS, top + SCENE_PIXELS], outline=AXIS_COLOR)
    step = _tick_step(span)
    names = "xyz"
    for axis in (0, 1):
        start = np.ceil(lo[axis] / step) * step
        for value in np.arange(start, lo[axis] + span + step * 1e-6, step):
            x, y = pixel([value, lo[1]] if axis == 0 else [lo[0], value])
            text = f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) > 1e-9 else "0"
            if axis == 0:
                draw.line([(x, top + SCENE_PIXELS), (x, top + SCENE_PIXELS + 5)], fill=AXIS_COLOR)
                draw.text((x, top + SCENE_PIXELS + 7), text, fill=AXIS_COLOR, font=small, anchor="mt")
            else:
                draw.line([(left - 6, y), (left - 1, y)], fill=AXIS_COLOR)
                draw.text((left - 8, y), text, fill=AXIS_COLOR, font=small, anchor="rm")
    draw.text((left + SCENE_PIXELS / 2, height - 6), f"{names[u]} (m)", fill="black", font=small, anchor="mb")
    draw.text((6, top + SCENE_PIXELS / 2), f"{names[v]} (m)", fill="black", font=small, anchor="lm")
    draw.text((left, 8), f"top view, looking down {up_axis}: {len(objects)} object(s); grey: other points "
              "(support plane, outliers)", fill="black", font=small)
    boxes = []
    for obj, colour in zip(objects, colours):
        (c0, r0), (c1, r1) = pixel(np.asarray(obj.bbox_min)[[u, v]]), pixel(np.asarray(obj.bbox_max)[[u, v]])
        boxes.append([min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)])
        draw.rectangle(boxes[-1], outline=colour, width=2)
    placed: list = []  # tags already drawn: a new one moves down until it overlaps none of them
    for i, (obj, colour, box) in enumerate(zip(objects, colours, boxes)):
        track = f" id {int(obj.id)}" if getattr(obj, "id", None) is not None else ""
        text = f"#{i}{track} {obj.display_label} {obj.probability_of(str(obj.display_label)):.0%}"
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=tag_font)
        w, h = x1 - x0 + 4, y1 - y0 + 4
        tx = min(box[0], left + SCENE_PIXELS - w - 2)
        ty = box[1] - h - 3 if box[1] - h - 3 >= top else box[3] + 3  # above the box, else under it
        while any(tx < px + pw and px < tx + w and ty < py + ph and py < ty + h for px, py, pw, ph in placed):
            ty += h + 2
        placed.append((tx, ty, w, h))
        draw.rectangle([tx, ty, tx + w, ty + h], fill="white", outline=colour)
        draw.text((tx + 2 - x0, ty + 2 - y0), text, fill="black", font=tag_font)
    return save_image(image, path)
