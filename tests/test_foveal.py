"""Foveal weights: hand-computed token boxes and Gaussians, and the mapping through open_clip's preprocessing."""
import math

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from pointfalip import foveal
from pointfalip.errors import InputError

ALPHA, SIGMA, EPS = 0.2, 100.0, 1e-6
SQUARE = {"size": 224, "resize_mode": "shortest", "interpolation": "bicubic"}


def paper_weights(h, w):
    """The paper's formula over an h×w token box, written with math only."""
    r = [[math.exp(-((i - (h - 1) / 2) ** 2 + (j - (w - 1) / 2) ** 2) / (2 * SIGMA ** 2)) for j in range(w)]
         for i in range(h)]
    lo, hi = min(map(min, r)), max(map(max, r))
    return torch.tensor([[ALPHA * (v - lo + EPS) / (hi - lo + EPS) for v in row] for row in r])


def expected_grid(grid, r0, c0, r1, c1):
    out = torch.zeros(grid)
    out[r0:r1, c0:c1] = paper_weights(r1 - r0, c1 - c0)
    return out


def test_gaussian_values_by_hand():
    w = foveal.from_token_boxes(torch.tensor([[2, 2, 5, 5]]), (7, 7))[0]
    assert w[3, 3] == pytest.approx(ALPHA)  # centre
    assert w[2, 2] == pytest.approx(ALPHA * EPS / (1 - math.exp(-2 / (2 * SIGMA ** 2)) + EPS), rel=1e-3)  # corner
    r1, r2 = math.exp(-1 / (2 * SIGMA ** 2)), math.exp(-2 / (2 * SIGMA ** 2))
    assert w[2, 3] == pytest.approx(ALPHA * (r1 - r2 + EPS) / (1 - r2 + EPS), rel=1e-4)  # edge midpoint
    assert w[2, 3] == pytest.approx(0.5 * ALPHA, rel=2e-2)  # ≈ half-way: the Gaussian is nearly flat
    assert w[0].abs().sum() == 0 and w[:, 6].abs().sum() == 0
    one = foveal.from_token_boxes(torch.tensor([[1, 1, 2, 2]]), (3, 3))[0]
    assert one[1, 1] == pytest.approx(ALPHA) and one.sum() == pytest.approx(ALPHA)


@pytest.mark.parametrize("grid,patch,tokens", [
    ((14, 14), 16, (3, 2, 7, 6)),  # box (32, 48, 96, 112): x 32..96 -> cols 2..5, y 48..112 -> rows 3..6
    ((7, 7), 32, (1, 1, 4, 3)),  # y 48/32=1.5 -> row 1, 112/32=3.5 -> up to row 3; x 1..2
    ((16, 16), 14, (3, 2, 8, 7)),  # x 32/14=2.3 -> col 2, 96/14=6.9 -> col 6; y 48/14=3.4, 112/14=8
])
def test_box_on_square_image(grid, patch, tokens):
    w = foveal.from_box((32, 48, 96, 112), (224, 224), SQUARE, grid)
    torch.testing.assert_close(w, expected_grid(grid, *tokens))


def test_box_on_landscape_image_accounts_for_centre_crop():
    # 448x224 -> shortest edge 224 keeps 448x224, centre crop drops 112 px left and right
    w = foveal.from_box((300, 100, 400, 200), (448, 224), SQUARE, (14, 14))
    # model x: 188..288 (clipped to 224) -> cols 11..13; y: 100..200 -> rows 6..12
    torch.testing.assert_close(w, expected_grid((14, 14), 6, 11, 13, 14))


def test_box_on_portrait_image():
    # 300x600 -> 224x448, crop 112 rows at the top; box y 150..300 -> 0..112 in the model input
    w = foveal.from_box((0, 150, 150, 300), (300, 600), SQUARE, (7, 7))
    torch.testing.assert_close(w, expected_grid((7, 7), 0, 0, 4, 4))


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("wh,box", [((400, 250), (60, 40, 210, 170)), ((180, 330), (20, 200, 150, 320))])
def test_box_matches_open_clip_transform(mode, wh, box):
    """The patches the box covers after open_clip's own eval transform are the token box."""
    cfg = {"size": 224, "resize_mode": mode, "interpolation": "bicubic", "mean": (0, 0, 0), "std": (1, 1, 1)}
    image = np.zeros((wh[1], wh[0], 3), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    tensor = open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(**cfg), is_train=False)(Image.fromarray(image))
    patches = torch.nn.functional.avg_pool2d(tensor[:1][None], 16)[0, 0] > 0.2  # covered beyond resampling blur
    w = foveal.from_box(box, wh, cfg, (14, 14))
    rows, cols = torch.nonzero(w > 0, as_tuple=True)
    prow, pcol = torch.nonzero(patches, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (prow.min(), prow.max(), pcol.min(), pcol.max())


def test_region_mask_equals_pixel_aligned_box():
    mask = np.zeros((224, 224), bool)
    mask[48:112, 32:96] = True
    torch.testing.assert_close(foveal.from_region(mask, SQUARE, (14, 14)),
                               foveal.from_box((32, 48, 96, 112), (224, 224), SQUARE, (14, 14)))


def test_occupancy_modes_by_hand():
    occ = torch.zeros(2, 64, 64, dtype=torch.bool)
    occ[0, 16:40, 8:24] = True  # 16-px patches: rows 1..2 (row 2 half), cols 0..1 (each half)
    w = foveal.from_occupancy(occ, (4, 4))
    torch.testing.assert_close(w[0], expected_grid((4, 4), 1, 0, 3, 2))
    assert w[1].abs().sum() == 0  # nothing occupied: no bias
    cov = foveal.from_occupancy(occ, (4, 4), mode="coverage")
    fraction = torch.zeros(4, 4)
    fraction[1, 0], fraction[1, 1], fraction[2, 0], fraction[2, 1] = 0.5, 0.5, 0.25, 0.25
    torch.testing.assert_close(cov[0], expected_grid((4, 4), 1, 0, 3, 2) * fraction)
    views = foveal.from_occupancy(occ.reshape(1, 2, 64, 64), (4, 4))
    assert views.shape == (1, 2, 4, 4)


def test_config_changes_alpha():
    w = foveal.from_token_boxes(torch.tensor([[0, 0, 1, 1]]), (2, 2), foveal.FovealConfig(alpha=0.7))
    assert w[0, 0, 0] == pytest.approx(0.7)


@pytest.mark.parametrize("box,match", [((10, 10, 10, 50), "empty"), ((50, 10, 20, 40), "empty"),
                                       ((-5, 0, 20, 20), "outside"), ((0, 0, 300, 20), "outside"),
                                       ((0, 0, float("nan"), 2), "finite")])
def test_bad_boxes(box, match):
    with pytest.raises(InputError, match=match):
        foveal.from_box(box, (224, 224), SQUARE, (14, 14))


def test_box_outside_centre_crop_and_bad_masks():
    with pytest.raises(InputError, match="centre crop"):
        foveal.from_box((0, 0, 50, 50), (448, 224), SQUARE, (14, 14))
    with pytest.raises(InputError, match="empty"):
        foveal.from_region(np.zeros((10, 10)), SQUARE, (14, 14))
    with pytest.raises(InputError, match="unknown foveal mode"):
        foveal.FovealConfig(mode="disc")
