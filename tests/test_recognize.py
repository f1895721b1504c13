"""Recognizer scores against the formula computed here from the encoder's outputs; 2D regions likewise."""
import numpy as np
import pytest
import torch
from conftest import load_random
from PIL import Image

import torch.nn.functional as F

from pointfalip import foveal, io, prompts
from pointfalip.errors import InputError
from pointfalip.projection import project
from pointfalip.prompts import build_prompts, text_features
from pointfalip.recognize import Recognizer, list_presets, load_preset
from pointfalip.regions import classify_region, rank_boxes

LABELS = ["chair", "table", "lamp"]


@pytest.fixture(scope="module")
def model():
    return load_random("pf-tiny-16")


@pytest.fixture
def clouds():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 300, 3)).astype(np.float32) * [1.0, 2.0, 0.5]


def by_hand(model, clouds, preset, falip=True, weights=None):
    cfg = load_preset(preset)
    text = text_features(model, build_prompts(LABELS, cfg.templates))
    out = []
    for cloud in clouds:
        views = project(io.normalize(cloud, "y"), method=cfg.projection, views=cfg.views, image_size=64)
        images = views.images[0]
        bias = foveal.from_occupancy(views.occupancy[0], (4, 4), cfg.foveal) if falip else None
        with torch.no_grad():
            f = model.encode_image(images, bias, normalize=True)
        beta = torch.full((len(images),), 1 / len(images)) if weights is None else torch.tensor(weights) / sum(weights)
        out.append(sum(beta[v] * (f[v] @ text.T) for v in range(len(images))))
    return torch.stack(out)


@pytest.mark.parametrize("preset", ["pointclip_v2", "pointclip"])
@pytest.mark.parametrize("falip", [True, False])
def test_scores_equal_the_formula(model, clouds, preset, falip):
    rec = Recognizer(model, labels=LABELS, preset=preset, falip=falip)
    torch.testing.assert_close(rec.scores(clouds), by_hand(model, clouds, preset, falip), atol=1e-5, rtol=1e-5)


def test_view_weights_and_probabilities(model, clouds):
    weights = [1, 2, 3, 4, 5, 6]
    rec = Recognizer(model, labels=LABELS, preset="pointclip", view_weights=weights)
    scores = rec.scores(clouds)
    torch.testing.assert_close(scores, by_hand(model, clouds, "pointclip", weights=weights), atol=1e-5, rtol=1e-5)
    preds = rec.classify(clouds, top_k=3)
    probs = (model.logit_scale * scores).softmax(-1)
    for b, cloud_preds in enumerate(preds):
        assert [p.label for p in cloud_preds] == [LABELS[i] for i in probs[b].argsort(descending=True)]
        assert [p.probability for p in cloud_preds] == pytest.approx(probs[b].sort(descending=True).values.tolist())
        assert cloud_preds[0].to_dict() == {"label": cloud_preds[0].label, "score": cloud_preds[0].probability}


def test_single_cloud_batch_and_ragged(model, clouds):
    rec = Recognizer(model, labels=LABELS)
    single = rec.classify(clouds[0], top_k=2)
    assert len(single) == 2 and single[0].label in LABELS
    ragged = rec.classify([clouds[0], clouds[1][:200]], top_k=2)
    assert [p.label for p in ragged[0]] == [p.label for p in single]
    assert [p.probability for p in ragged[0]] == pytest.approx([p.probability for p in single], abs=1e-5)
    batch = rec.scores(clouds)
    loop = torch.cat([rec.scores(c) for c in clouds])
    torch.testing.assert_close(batch, loop, atol=1e-5, rtol=1e-5)
    assert set(rec.last_timings) == {"projection", "encoder"}


def test_each_view_alone_against_the_text(model, clouds):
    """classify_views: each view's own best label, from the encoder's view features and the text by hand."""
    rec = Recognizer(model, labels=LABELS)
    views = rec.classify_views(clouds[0])
    cfg = load_preset("pointclip_v2")
    depth = project(io.normalize(clouds[0], "y"), method=cfg.projection, views=cfg.views, image_size=64)
    bias = foveal.from_occupancy(depth.occupancy[0], (4, 4), cfg.foveal)
    with torch.no_grad():
        f = model.encode_image(depth.images[0], bias, normalize=True)
    text = text_features(model, build_prompts(LABELS, cfg.templates))
    probs = (model.logit_scale * f @ text.T).softmax(-1)
    assert [v.label for v in views] == [LABELS[int(i)] for i in probs.argmax(-1)]
    assert [v.probability for v in views] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_embed_only_recognizer_and_the_two_steps(model, clouds):
    """A Recognizer without labels embeds (for few-shot caches); logits are logit_scale times the fused score."""
    bare = Recognizer(model)
    feats = bare.embed(clouds)
    assert feats.shape == (2, 10, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 10))
    with pytest.raises(InputError, match="no labels"):
        bare.logits(feats)
    rec = Recognizer(model, labels=LABELS)
    torch.testing.assert_close(rec.embed(clouds), feats)
    torch.testing.assert_close(rec.logits(feats), model.logit_scale * by_hand(model, clouds, "pointclip_v2"),
                               atol=1e-4, rtol=1e-5)
    foveal_feats, plain = rec.embed(clouds, with_plain=True)
    torch.testing.assert_close(foveal_feats, feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, Recognizer(model, labels=LABELS, falip=False).embed(clouds),
                               atol=1e-5, rtol=1e-5)


def test_dataset_labels_and_errors(model):
    rec = Recognizer(model, dataset="modelnet10")
    assert rec.labels[6] == "nightstand" and len(rec.labels) == 10
    with pytest.raises(InputError):
        Recognizer(model, labels=[])
    with pytest.raises(InputError, match="preset"):
        Recognizer(model, labels=LABELS, preset="nope")
    with pytest.raises(InputError):
        Recognizer(model, labels=LABELS).classify(np.full((50, 3), np.nan, np.float32))
    assert {"pointclip", "pointclip_v2"} <= set(list_presets())


def test_real_meshes_classify(model, shared_data):
    meshes = sorted((shared_data / "meshes").glob("*.off"))
    clouds = [io.load_points(m, num_points=512) for m in meshes]
    rec = Recognizer(model, dataset="modelnet40", up_axis="z")
    preds = rec.classify(clouds, top_k=3)
    cfg = load_preset("pointclip_v2")
    raw = prompts.raw_class_names("modelnet40")
    text = text_features(model, build_prompts(raw, cfg.templates))
    for cloud, cloud_preds in zip(clouds, preds):
        depth = project(io.normalize(cloud, "z"), method=cfg.projection, views=cfg.views, image_size=64)
        bias = foveal.from_occupancy(depth.occupancy[0], (4, 4), cfg.foveal)
        with torch.no_grad():
            f = model.encode_image(depth.images[0], bias, normalize=True)
        probs = (model.logit_scale * (f @ text.T).mean(0)).softmax(-1)
        top = probs.topk(3)
        assert [p.label for p in cloud_preds] == [prompts.humanize(raw[i]) for i in top.indices.tolist()]
        assert [p.probability for p in cloud_preds] == pytest.approx(top.values.tolist(), abs=1e-5)


# ---- 2D ---------------------------------------------------------------------------------------------------
@pytest.fixture
def picture():
    rng = np.random.default_rng(2)
    return Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8))


def test_classify_region_is_falip_on_the_box(model):
    """A box on a 64x64 image (no resize, no crop for the 64-pixel model) covers token rows 2-3 and columns 1-2 of
    the 4x4 grid: the paper's Gaussian over a 2x2 token box is flat, so the bias is α there and 0 elsewhere."""
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    preds = classify_region(model, picture, ["cat", "dog"], box=(16, 32, 48, 64))
    bias = torch.zeros(1, 4, 4)
    bias[0, 2:4, 1:3] = foveal.FovealConfig().alpha
    with torch.no_grad():
        f = F.normalize(model.encode_image(model.preprocess(picture)[None], bias), dim=-1)[0]
        per_prompt = F.normalize(model.encode_text([t.format(n) for n in ("cat", "dog")
                                                    for t in prompts.templates("photo")]), dim=-1)
    text = F.normalize(per_prompt.reshape(2, -1, per_prompt.shape[-1]).mean(1), dim=-1)
    probs = (model.logit_scale * f @ text.T).softmax(-1)
    got = {p.label: p.probability for p in preds}
    assert got == pytest.approx({"cat": probs[0].item(), "dog": probs[1].item()})


def test_rank_boxes_batches_one_pass_per_box(model, picture):
    boxes = [(0, 0, 50, 50), (60, 20, 150, 90)]
    preds = rank_boxes(model, picture, boxes, "a red car", prompt="crop")
    crops = torch.stack([model.preprocess(picture.crop(b)) for b in boxes])
    with torch.no_grad():
        f = model.encode_image(crops, normalize=True)
    t = model.encode_text(["a red car"], normalize=True)[0]
    probs = (model.logit_scale * f @ t).softmax(-1)
    assert {p.label: p.probability for p in preds} == pytest.approx({"0,0,50,50": probs[0].item(),
                                                                     "60,20,150,90": probs[1].item()})
