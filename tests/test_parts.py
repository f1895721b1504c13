"""Part segmentation (pointfalip.parts) against PointCLIP V2's own output, hand-made geometry and re-derivations
written here with other methods (explicit loops, numpy), never against numbers the code printed once."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_random, raises_one_line

from pointfalip import parts, projection
from pointfalip.parts import (PartProjectionConfig, PartSegmenter, accuracy, class_miou, instance_miou, part_iou,
                              pixel_logits, point_scores, project_parts, segmentation_metrics, shape_miou,
                              smooth_and_upsample)

GOLDEN = "golden/pointclip_v2_parts.npz"
V2_EXACT = PartProjectionConfig(v2_transposed_lookup=True)


@pytest.fixture(scope="module")
def golden():
    from conftest import SHARED_DATA

    path = SHARED_DATA / GOLDEN
    if not path.is_file():
        pytest.skip("../shared/data is absent")
    return dict(np.load(path))


@pytest.fixture(scope="module")
def v2_views(golden):
    return project_parts(golden["points"], V2_EXACT)


# ---------------------------------------------------------------------------------------------- projection

def test_v2_exact_mode_reproduces_pointclip_v2(golden, v2_views):
    b, v, n = 3, 10, 2048
    views = v2_views
    assert views.images.shape == (b, v, 3, 224, 224) and views.images.dtype == torch.float32
    assert views.raw_images.shape == (b, v, 224, 224)
    assert views.point_pixels.shape == views.raw_point_pixels.shape == (b, v, n, 2)
    assert views.point_pixels.dtype == torch.int64 and views.visible.dtype == torch.bool
    assert torch.equal(views.images[:, :, 0], views.images[:, :, 2])

    raw_err = np.abs(views.raw_images.reshape(30, 224, 224).numpy() - golden["raw_images"][:, 0])
    img_err = np.abs(views.images[:, :, 0].reshape(30, 224, 224).numpy() - golden["images"][:, 0])
    # V2's index_put keeps one of the points sharing a voxel: a handful of pixels may differ, no more
    assert (raw_err > 1e-4).sum() <= 100 and np.median(raw_err) < 1e-6
    assert (img_err > 1e-4).sum() <= 100 and np.median(img_err) < 1e-6

    loc = views.raw_point_pixels.reshape(30, n, 2).numpy()
    loc224 = views.point_pixels.reshape(30, n, 2).numpy()
    assert (loc != golden["point_loc"]).any(-1).sum() <= 5
    assert (loc224 != golden["point_loc_224"]).any(-1).sum() <= 5
    seen = views.visible.reshape(30, n).numpy()
    assert (seen != golden["is_seen"].astype(bool)).sum() <= 30  # 0.05 % of 61,440 flags


def test_v2_rescale_of_pixels_into_the_cropped_image(v2_views):
    # V2: ceil((loc - 20) * 224 / 184), written here in float64 numpy
    raw = v2_views.raw_point_pixels.numpy().astype(np.float64)
    assert np.array_equal(v2_views.point_pixels.numpy(), np.ceil((raw - 20) * 224 / 184).astype(np.int64))


def test_default_lookup_reads_points_where_they_are_drawn(golden, v2_views):
    views = project_parts(golden["points"][:1])
    ours = views.raw_point_pixels[0].numpy()
    assert np.array_equal(ours, golden["point_loc"][:10, :, ::-1])  # V2 reads (col, row)
    assert np.array_equal(views.point_pixels[0].numpy(), golden["point_loc_224"][:10, :, ::-1])

    def on_object(v):
        raw, px, vis = v.raw_images[0], v.raw_point_pixels[0], v.visible[0]
        value = raw[torch.arange(10)[:, None], px[..., 0], px[..., 1]]
        return float((value[vis] < 1).float().mean())

    assert on_object(views) == 1.0  # every point the default calls seen sits on the object in the image
    assert on_object(v2_views) < 0.9  # V2's transposed lookup often lands on background


def test_known_pixels_of_a_hand_made_cloud():
    # one view, no rotation: row follows x, column y. Largest extent 2 -> unit coordinates in [-1, 1];
    # V2: row = ceil((0.7 u + 1) / 2 * 224), i.e. 34 for u = -1, 112 for u = 0, 191 for u = 1
    cfg = PartProjectionConfig(view_euler=((0, 0, 0),), bias_euler=((0, 0, 0),), bias2_euler=((0, 0, 0),))
    pts = np.array([[-1, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float32)
    views = project_parts(pts, cfg)
    expected = np.array([[34, 112], [191, 112], [112, 191], [112, 34], [112, 112], [112, 112]])
    assert np.array_equal(views.raw_point_pixels[0, 0].numpy(), expected)
    # ceil((34 - 20) * 224 / 184) = 18, ceil(92 * 224 / 184) = 112, ceil(171 * 224 / 184) = 209
    assert np.array_equal(views.point_pixels[0, 0].numpy(), np.array([[18, 112], [209, 112], [112, 209],
                                                                       [112, 18], [112, 112], [112, 112]]))
    raw = views.raw_images[0, 0]
    assert all(raw[r, c] < 1 for r, c in expected) and raw[5, 5] == 1 and raw.min() == 0
    # the two points on the z axis share a pixel: the one at z = +1 is in front, the other hidden
    assert views.visible[0, 0].tolist() == [True, True, True, True, True, False]
    swapped = project_parts(pts, PartProjectionConfig(**{**cfg.__dict__, "v2_transposed_lookup": True}))
    assert np.array_equal(swapped.raw_point_pixels[0, 0].numpy(), expected[:, ::-1])


def test_point_behind_a_wall_is_unseen_facing_the_wall_and_seen_from_behind():
    # By hand from V2's angles: view 0 is Rx(0) Ry(0) Rz(90°), then Rx(45°), then Ry(20°); its depth axis
    # (largest depth = nearest the viewer) is d0 = (sin45 cos20, sin20, cos45 cos20). View 2 (Rx(180°) first)
    # looks from the other side: d2 = (-sin45 cos20, sin20, -cos45 cos20).
    c20, s20, s45 = math.cos(math.radians(20)), math.sin(math.radians(20)), math.sin(math.radians(45))
    d0 = np.array([s45 * c20, s20, s45 * c20])
    d2 = np.array([-s45 * c20, s20, -s45 * c20])
    rng = np.random.default_rng(0)
    u = np.cross(d0, [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    w = np.cross(d0, u)
    radius = 0.6 * np.sqrt(rng.random(3000))
    angle = rng.random(3000) * 2 * np.pi
    wall = 0.5 * d0 + radius[:, None] * (np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * w)
    hidden = -0.3 * d0
    assert (wall @ d2).max() < hidden @ d2  # from view 2 the hidden point is in front of the whole wall
    cloud = np.vstack([wall, hidden[None]]).astype(np.float32)
    views = project_parts(cloud)
    visible = views.visible[0]
    assert not visible[0, -1] and visible[2, -1]
    assert visible[0, :-1].float().mean() > 0.95  # the wall itself faces view 0


def test_any_number_of_points_and_batches_match_single_clouds():
    rng = np.random.default_rng(1)
    clouds = rng.normal(size=(2, 300, 3)).astype(np.float32)
    cfg = PartProjectionConfig(view_euler=((0, 0, 90), (0, 90, 90)), bias_euler=((45, 0, 0), (12, 0, 0)),
                               bias2_euler=((0, 20, 0), (0, 12, 0)))
    batch = project_parts(torch.from_numpy(clouds), cfg)
    single = project_parts(clouds[1], cfg)
    assert batch.visible.shape == (2, 2, 300)
    for a, b in zip(batch, single):
        assert torch.equal(a[1], b[0])
    # scale and position do not matter: every view re-centres and rescales its cloud
    moved = project_parts(clouds[1] * 3.0 + 5.0, cfg)
    assert torch.equal(moved.point_pixels, single.point_pixels)


def test_views_rendered_together_equal_views_rendered_alone(monkeypatch):
    clouds = np.random.default_rng(5).normal(size=(2, 400, 3)).astype(np.float32)
    cfg = PartProjectionConfig(view_euler=((0, 0, 90), (0, 90, 90)), bias_euler=((45, 0, 0), (12, 0, 0)),
                               bias2_euler=((0, 20, 0), (0, 12, 0)))
    monkeypatch.setattr(projection, "_PART_CPU_CHUNK_FLOATS", 1)  # one view a chunk
    alone = project_parts(clouds, cfg)
    monkeypatch.setattr(projection, "_PART_CPU_CHUNK_FLOATS", 1 << 30)  # all four views in one chunk, one shared box
    together = project_parts(clouds, cfg)
    assert torch.allclose(alone.raw_images, together.raw_images, atol=1e-6)
    assert torch.equal(alone.visible, together.visible) and torch.equal(alone.point_pixels, together.point_pixels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    directions = np.random.default_rng(4).normal(size=(2, 2048, 3))
    clouds = (directions / np.linalg.norm(directions, axis=-1, keepdims=True) * [0.9, 0.5, 0.3]).astype(np.float32)
    for cfg in (PartProjectionConfig(), V2_EXACT):
        cpu = project_parts(clouds, cfg)
        gpu = project_parts(torch.from_numpy(clouds).cuda(), cfg)
        assert gpu.images.is_cuda and gpu.visible.is_cuda
        assert (gpu.raw_images.cpu() - cpu.raw_images).abs().max() < 1e-4
        assert (gpu.point_pixels.cpu() != cpu.point_pixels).any(-1).sum() <= 5
        assert (gpu.visible.cpu() != cpu.visible).sum() <= 20


def test_bad_projection_input_is_one_line():
    raises_one_line(project_parts, np.zeros((5, 2)), match="shaped")
    raises_one_line(project_parts, np.full((5, 3), np.nan), match="NaN")
    raises_one_line(PartProjectionConfig, bias_euler=((0, 0, 0),), match="one triple a view")
    raises_one_line(PartProjectionConfig, crop=(100, 50), match="crop")
    raises_one_line(PartProjectionConfig, pool_size=4, match="odd")


# ---------------------------------------------------------------------------------------------- scoring steps

def test_pixel_logits_against_loops():
    tokens = F.normalize(torch.randn(2, 6, 5), dim=-1)
    text = F.normalize(torch.randn(4, 5), dim=-1)
    out = pixel_logits(tokens, text, (2, 3))
    assert out.shape == (2, 4, 2, 3)
    for k in range(2):
        for c in range(4):
            for i in range(2):
                for j in range(3):
                    expected = 100.0 * sum(float(tokens[k, i * 3 + j, d]) * float(text[c, d]) for d in range(5))
                    assert abs(float(out[k, c, i, j]) - expected) < 1e-4


def _numpy_smooth_and_upsample(x: np.ndarray, size: int) -> np.ndarray:
    """Replication pad (left 2, right 3, top 2, bottom 3), 6x6 mean, bilinear (half-pixel centres)."""
    k, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (2, 3), (2, 3)), mode="edge")
    smooth = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            smooth[:, :, i, j] = padded[:, :, i:i + 6, j:j + 6].mean(axis=(-2, -1))

    def axis(n_in):
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    (r0, r1, fr), (c0, c1, fc) = axis(h), axis(w)
    top = smooth[:, :, r0][:, :, :, c0] * (1 - fc) + smooth[:, :, r0][:, :, :, c1] * fc
    bottom = smooth[:, :, r1][:, :, :, c0] * (1 - fc) + smooth[:, :, r1][:, :, :, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def test_smooth_and_upsample_against_numpy():
    x = torch.randn(2, 3, 4, 5)
    out = smooth_and_upsample(x, size=13)
    assert out.shape == (2, 3, 13, 13)
    np.testing.assert_allclose(out.numpy(), _numpy_smooth_and_upsample(x.numpy().astype(np.float64), 13),
                               atol=1e-5)
    # V2's own modules give the same
    v2 = torch.nn.Upsample(size=13, mode="bilinear")(torch.nn.AvgPool2d(6, 1, 0)(
        torch.nn.ReplicationPad2d([2, 3, 2, 3])(x)))
    assert torch.allclose(out, v2, atol=1e-6)


def test_point_scores_against_loops():
    b, v, c, s, n = 2, 3, 4, 7, 5
    maps = torch.randn(b, v, c, s, s)
    pixels = torch.randint(0, s, (b, v, n, 2))
    visible = torch.rand(b, v, n) > 0.3
    weights = torch.tensor([0.25, 1.0, 0.75])
    out = point_scores(maps, pixels, visible, weights)
    assert out.shape == (b, n, c)
    expected = np.zeros((b, n, c))
    for bi in range(b):
        for vi in range(v):
            for ni in range(n):
                if visible[bi, vi, ni]:
                    r, col = pixels[bi, vi, ni].tolist()
                    expected[bi, ni] += float(weights[vi]) * maps[bi, vi, :, r, col].numpy()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- metrics

def test_part_iou_and_mious_by_hand():
    pred = [0, 0, 1, 1, 2, 2]
    truth = [0, 1, 1, 1, 2, 0]
    # part 0: I {0}, U {0,1,5} -> 1/3; part 1: I {2,3}, U {1,2,3} -> 2/3; part 2: I {4}, U {4,5} -> 1/2;
    # part 3 is in neither: 1 (PointNet's convention)
    np.testing.assert_allclose(part_iou(pred, truth, [0, 1, 2, 3]), [1 / 3, 2 / 3, 1 / 2, 1.0])
    assert shape_miou(pred, truth, [0, 1, 2, 3]) == pytest.approx(0.625)
    perfect = [0, 1, 0, 1]
    preds, truths = [pred, perfect, [1, 1]], [truth, perfect, [0, 1]]
    part_lists = [[0, 1, 2, 3], [0, 1], [0, 1]]
    # third shape: part 0 I 0 U 1 -> 0; part 1 I 1 U 2 -> 1/2; mean 1/4
    assert instance_miou(preds, truths, part_lists) == pytest.approx((0.625 + 1.0 + 0.25) / 3)
    # categories a, a, b: a -> (0.625 + 1) / 2, b -> 0.25
    assert class_miou(preds, truths, part_lists, ["a", "a", "b"]) == pytest.approx(((0.625 + 1.0) / 2 + 0.25) / 2)
    assert accuracy(preds, truths) == pytest.approx((4 / 6 + 1.0 + 0.5) / 3)
    report = segmentation_metrics(preds, truths, part_lists, ["a", "a", "b"])
    assert report["per_category"] == pytest.approx({"a": 0.8125, "b": 0.25})
    assert instance_miou([[1, 1]], [[1, 1]], [0, 1]) == 1.0  # shared part list; part 0 absent from both


def test_shapenetpart_names():
    cats = parts.list_categories()
    assert len(cats) == 16 and cats[0] == "airplane" and cats[-1] == "table"
    assert parts.category_parts("chair") == ["back", "seat pad", "leg", "armrest"]
    ranges = [parts.category_labels(c) for c in cats]
    assert ranges[0].start == 0 and ranges[-1].stop == 50
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
    assert all(len(parts.category_parts(c)) <= len(r) for c, r in zip(cats, ranges))
    assert all("{part}" in t and "{category}" in t for t in parts.part_templates(True))
    assert all("{part}" in t and "{category}" not in t for t in parts.part_templates(False))


# ---------------------------------------------------------------------------------------------- dense tokens

def test_clearclip_changes_only_the_last_block():
    model = load_random("pf-tiny-16")
    vis = model.visual
    with torch.no_grad():  # non-trivial norms and biases, so that every term is exercised
        for p in list(vis.transformer.resblocks[-1].parameters()) + list(vis.ln_post.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        x = vis.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([vis.class_embedding.expand(2, 1, -1), x], dim=1) + vis.positional_embedding
        x = vis.ln_pre(x)
        blocks = vis.transformer.resblocks
        for blk in blocks[:-1]:
            x = blk(x)
        last = blocks[-1]
        y = last.ln_1(x)
        width = y.shape[-1]
        w, bias = last.attn.in_proj_weight, last.attn.in_proj_bias
        q = y @ w[:width].T + bias[:width]
        v = y @ w[2 * width:].T + bias[2 * width:]
        heads = last.attn.num_heads
        hd = width // heads
        outs = []
        for h in range(heads):
            qh, vh = q[..., h * hd:(h + 1) * hd], v[..., h * hd:(h + 1) * hd]
            outs.append(torch.softmax(qh @ qh.transpose(1, 2) / math.sqrt(hd), dim=-1) @ vh)
        dense = torch.cat(outs, dim=-1) @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        naive_clear = F.normalize(vis.ln_post(dense)[:, 1:] @ vis.proj, dim=-1)
        naive_plain = F.normalize(vis.ln_post(last(x))[:, 1:] @ vis.proj, dim=-1)

        feats, tokens = model.encode_image(images, return_tokens=True, dense="clearclip", normalize=True)
        _, plain_tokens = model.encode_image(images, return_tokens=True, dense="tokens", normalize=True)
        reference = model.encode_image(images, normalize=True)
    assert tokens.shape == (2, 16, 32)
    assert torch.allclose(tokens, naive_clear, atol=1e-5)
    assert torch.allclose(plain_tokens, naive_plain, atol=1e-5)
    assert torch.allclose(feats, reference, atol=1e-5)  # pooled features stay the encoder's own
    assert not torch.allclose(tokens, plain_tokens, atol=1e-3)


# ---------------------------------------------------------------------------------------------- segmenter

TWO_VIEWS = PartProjectionConfig(view_euler=((0, 0, 90), (180, 0, 90)), bias_euler=((45, 0, 0),) * 2,
                                 bias2_euler=((0, 20, 0),) * 2, image_size=64)


@pytest.fixture(scope="module")
def tiny_model():
    return load_random("pf-tiny-16")


def test_segmenter_end_to_end(tiny_model):
    seg = PartSegmenter(tiny_model, category="chair")
    assert seg.parts == ["back", "seat pad", "leg", "armrest"]
    assert seg.prompts["leg"][0] == "a depth map of the leg of a chair."
    cloud = np.random.default_rng(2).normal(size=(777, 3)).astype(np.float32)
    scores = seg.scores(cloud)
    assert scores.shape == (777, 4) and torch.isfinite(scores).all()
    assert torch.equal(seg.segment(cloud), scores.argmax(dim=-1))


def test_segmenter_batch_equals_single_clouds_and_matches_the_steps(tiny_model):
    seg = PartSegmenter(tiny_model, parts="top, bottom", category="box", config=TWO_VIEWS, view_weights=[1.0, 0.5],
                        dense="clearclip")
    clouds = np.random.default_rng(3).normal(size=(2, 200, 3)).astype(np.float32)
    batch = seg.scores(clouds)
    assert batch.shape == (2, 200, 2) and seg.segment(clouds).shape == (2, 200)
    single = seg.scores(clouds[1])
    assert torch.allclose(batch[1], single, atol=1e-5)
    # the same scores assembled here, per view, from the encoder and the part text alone
    views = project_parts(clouds[1], TWO_VIEWS)
    text = F.normalize(torch.stack([F.normalize(tiny_model.encode_text(ps), dim=-1).mean(0)
                                    for ps in seg.prompts.values()]), dim=-1)
    expected = torch.zeros(200, 2)
    with torch.no_grad():
        for v, weight in enumerate([1.0, 0.5]):
            _, tok = tiny_model.encode_image(views.images[0, v:v + 1], return_tokens=True, dense="clearclip",
                                             normalize=True)
            grid = (100.0 * tok[0] @ text.T).T.reshape(2, 4, 4)
            up = _numpy_smooth_and_upsample(grid[None].double().numpy(), 64)[0]
            r, c = views.point_pixels[0, v].T
            expected += weight * views.visible[0, v, :, None] * torch.from_numpy(up[:, r, c].T).float()
    assert torch.allclose(single, expected, atol=1e-3)


def test_segmenter_bad_input_is_one_line(tiny_model):
    raises_one_line(PartSegmenter, tiny_model, match="give the parts")
    raises_one_line(PartSegmenter, tiny_model, category="spaceship", match="unknown category")
    raises_one_line(PartSegmenter, tiny_model, parts=[], match="empty")
    raises_one_line(PartSegmenter, tiny_model, parts="leg,seat,leg", match="duplicate")
    raises_one_line(PartSegmenter, tiny_model, parts="a,b", templates=["a photo of {part} on a {category}"],
                    match="needs a category")
    raises_one_line(PartSegmenter, tiny_model, parts="a,b", templates=["no placeholder"], match="{part}")
    raises_one_line(PartSegmenter, tiny_model, parts="a,b", view_weights=[1, 2], match="view weights")
    raises_one_line(PartSegmenter, tiny_model, parts="a,b", dense="dino", match="dense")
    raises_one_line(PartSegmenter, tiny_model, parts="a,b", prompts={"a": ["x"]}, match="'b'")
    raises_one_line(PartSegmenter, tiny_model, parts="a,b", config=PartProjectionConfig(), match="image_size")


# ---------------------------------------------------------------------------------------------- registry, presets

def test_registered_projection_is_project_parts():
    from pointfalip.projection import ViewSet, list_projection_methods, project

    assert "pointclip_v2_parts" in list_projection_methods()
    clouds = np.random.default_rng(8).normal(size=(2, 300, 3)).astype(np.float32)
    cfg = PartProjectionConfig(view_euler=((0, 0, 90), (0, 90, 90)), bias_euler=((45, 0, 0), (12, 0, 0)),
                               bias2_euler=((0, 20, 0), (0, 12, 0)), image_size=96)
    direct = project_parts(clouds, cfg)
    views = project(clouds, method="pointclip_v2_parts", image_size=96, config=cfg)
    assert views.images.shape == (2, 2, 3, 96, 96) and views.point_pixels.shape == (2, 2, 300, 2)
    assert torch.equal(views.images, direct.images) and torch.equal(views.point_pixels, direct.point_pixels)
    assert torch.equal(views.visible, direct.visible)
    assert torch.equal(views.occupancy, direct.images[:, :, 0] < 1 - 1e-6) and views.occupancy.any()
    # image_size of project() wins over the settings'; a ViewSet replaces the settings' views (rotation, bias)
    assert project(clouds, method="pointclip_v2_parts", image_size=48, config=cfg).images.shape[-1] == 48
    two = ViewSet.from_euler("two", [[0, 0, 90], [90, 0, 90]], [[45, 0, 0], [0, 0, 0]])
    plain = PartProjectionConfig(view_euler=((0, 0, 90), (90, 0, 90)), bias_euler=((45, 0, 0), (0, 0, 0)),
                                 bias2_euler=((0, 0, 0),) * 2)
    by_views = project(clouds, method="pointclip_v2_parts", views=two, image_size=224)
    assert torch.equal(by_views.point_pixels, project_parts(clouds, plain).point_pixels)
    assert project(clouds[0], method="pointclip_v2_parts").images.shape[1] == 10  # the settings' ten views


def test_segmenter_projects_through_the_registry(tiny_model, monkeypatch):
    from pointfalip import projection

    seen = []
    real = projection.project

    def spy(*args, **kwargs):
        seen.append(kwargs.get("method"))
        return real(*args, **kwargs)

    monkeypatch.setattr(projection, "project", spy)
    seg = PartSegmenter(tiny_model, parts="a,b", config=TWO_VIEWS, cache_dir=False)
    cloud = np.random.default_rng(9).normal(size=(150, 3)).astype(np.float32)
    scores = seg.scores(cloud)
    assert seen == ["pointclip_v2_parts"]
    views = project_parts(cloud, TWO_VIEWS)
    assert torch.allclose(scores, seg.score_views(views, seg.view_tokens(views.images.flatten(0, 1))["tokens"])[0])


def test_part_presets(tiny_model, tmp_path):
    assert parts.list_part_presets() == ["pointclip_v2_parts", "pointfalip_parts"]
    # the preset named after V2 is V2's zeroshot_seg exactly; the project's own default differs in the lookup only
    default, exact = parts.load_part_preset(), parts.load_part_preset("pointclip_v2_parts")
    assert parts.DEFAULT_PRESET == "pointfalip_parts"
    assert dataclasses.replace(default.projection, v2_transposed_lookup=True) == exact.projection
    assert dataclasses.replace(default, projection=exact.projection) == exact
    assert default.projection == PartProjectionConfig() and default.dense == "tokens"
    assert default.view_weights is None and default.templates is None
    assert exact.projection == V2_EXACT and exact.dense == "tokens"
    seg = PartSegmenter(tiny_model, category="chair", preset="pointclip_v2_parts", cache_dir=False)
    assert seg.config == PartProjectionConfig(v2_transposed_lookup=True, image_size=64)  # the model's size
    assert torch.equal(seg.view_weights, torch.ones(10))
    mine = tmp_path / "mine.yaml"
    mine.write_text("dense: clearclip\nview_weights: [1, 0.5]\ntemplates: ['{part} of a {category}']\n"
                    "projection:\n  view_euler: [[0, 0, 90], [180, 0, 90]]\n  bias_euler: [[45, 0, 0], [45, 0, 0]]\n"
                    "  bias2_euler: [[0, 20, 0], [0, 20, 0]]\n")
    seg = PartSegmenter(tiny_model, parts="top,bottom", category="box", preset=mine, cache_dir=False)
    assert seg.dense == "clearclip" and seg.view_weights.tolist() == [1.0, 0.5] and seg.config == TWO_VIEWS
    assert seg.prompts == {"top": ["top of a box"], "bottom": ["bottom of a box"]}
    assert PartSegmenter(tiny_model, parts="a,b", category="box", preset=mine, dense="tokens",
                         cache_dir=False).dense == "tokens"
    mine.write_text("projection:\n  pool_sise: 3\n")
    assert "pool_sise" in raises_one_line(PartSegmenter, tiny_model, parts="a,b", preset=mine)
    mine.write_text("dense: dino\n")
    assert "dense" in raises_one_line(PartSegmenter, tiny_model, parts="a,b", preset=mine)
    raises_one_line(PartSegmenter, tiny_model, parts="a,b", preset="nope", match="unknown parts preset 'nope'")


def test_per_part_iou_by_hand():
    # category a, parts [0, 1]: shape 1 IoUs (1/2, 1/2), shape 2 (0, 1/3); category b, parts [2, 3]: (1, 1)
    preds = [[0, 0, 1], [1, 1, 1], [2, 3]]
    truths = [[0, 1, 1], [0, 1, 0], [2, 3]]
    out = segmentation_metrics(preds, truths, [[0, 1], [0, 1], [2, 3]], ["a", "a", "b"])
    assert out["per_part"]["a"] == pytest.approx([0.25, (1 / 2 + 1 / 3) / 2])
    assert out["per_part"]["b"] == pytest.approx([1.0, 1.0])
    assert out["per_category"] == pytest.approx({"a": (1 / 2 + 1 / 6) / 2, "b": 1.0})
    assert out["class_miou"] == pytest.approx((1 / 3 + 1) / 2)


def test_part_sheet_colours_the_seen_points(tmp_path):
    from PIL import Image

    from pointfalip.render import PART_DOT, TILE_GAP, part_colors, save_part_sheet

    images = torch.ones(2, 3, 32, 32)
    pixels = torch.tensor([[[5, 5], [20, 25]], [[5, 5], [20, 25]]])
    visible = torch.tensor([[True, True], [False, True]])
    labels = torch.tensor([0, 2])
    path = save_part_sheet(tmp_path / "s.png", images, pixels, visible, labels, ["a", "b", "c"], columns=2)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    colors = part_colors(3)
    assert len({tuple(c) for c in part_colors(30)}) == 30
    assert (sheet[5 - PART_DOT:5 + PART_DOT + 1, 5 - PART_DOT:5 + PART_DOT + 1] == colors[0]).all()  # view 0
    assert (sheet[5, 32 + TILE_GAP + 5] == 255).all()  # point 0 is hidden in view 1
    assert (sheet[20, 25] == colors[2]).all() and (sheet[20, 32 + TILE_GAP + 25] == colors[2]).all()
    assert sheet.shape[0] > 32  # the legend under the tiles


def test_prompt_file_laid_out_by_category(tiny_model, tmp_path):
    """PointCLIP V2 releases its part prompts per category: a file {category: {part: [prompts]}} gives each
    category its own (the way to reproduce V2 with its released, test-tuned prompts)."""
    import json

    path = tmp_path / "v2_parts.json"
    path.write_text(json.dumps({"Mug": {"handle": ["a handle of a mug"], "body": ["the mug's body"]},
                                "Cap": {"panels": ["cap panels"], "peak": ["the peak of a cap"]}}))
    seg = PartSegmenter(tiny_model, parts=["handle", "body"], category="mug", prompts=path, cache_dir=False)
    assert seg.prompts == {"handle": ["a handle of a mug"], "body": ["the mug's body"]}
    raises_one_line(PartSegmenter, tiny_model, parts=["handle", "body"], category="lamp", prompts=path,
                    match="no prompts for category 'lamp'")
    raises_one_line(PartSegmenter, tiny_model, parts=["handle", "body"], prompts=path, match="--category")
