"""Referring expressions (pointfalip.refcoco): every box score recomputed here as FALIP's reference code computes it.

The reference (pumpkin805/FALIP ``executor.py`` on ReCLIP) is re-derived in this file on generated images: its
pixels by its own Pillow calls, its square bicubic resize with torchvision, its 197-token attention mask row for the
foveal box, its caption, sum, softmax and IoU. No RefCOCO images exist on this machine.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageDraw, ImageFilter

from conftest import interrupt_after, load_random, one_line_error
from pointfalip import refcoco
from pointfalip.errors import InputError

MODEL = "pf-tiny-16"  # 64 px input, 4x4 patches of 16 px
RUNS = "falip,crop,blur,circle,shade,crop+blur"
BOXES_1 = [[60, 10, 80, 70], [0, 0, 50, 50], [120, 40, 100, 110], [30.4, 100.6, 0.8, 40]]  # 240x160 image
BOXES_2 = [[10.5, 20.25, 200, 100], [205, 150, 200, 149.5]]  # 410x300 image


@pytest.fixture(scope="module")
def model():
    return load_random(MODEL, precision="fp32")


def _line(image: int, ann: int, anns, ann_id, sentences, ids=None) -> dict:
    ids = ids or [image * 10 + k for k in range(len(anns))]
    return {"file_name": f"COCO_train2014_{image:012d}_{ann}.jpg", "image_id": image,
            "anns": [{"bbox": b, "id": i, "segmentation": []} for b, i in zip(anns, ids)],
            "ann_id": ann_id, "sentences": [{"raw": s, "tokens": s.split()} for s in sentences]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two COCO-named JPEGs and a ReCLIP jsonl: ann_id as a list, an int and a string; suffixed file names."""
    folder = tmp_path_factory.mktemp("rec")
    (folder / "images").mkdir()
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate([(240, 160), (410, 300)], 1):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        pixels[20:90, 40:150] = (200, 30, 30)
        Image.fromarray(pixels).save(folder / "images" / f"COCO_train2014_{i:012d}.jpg")
    lines = [_line(1, 10, BOXES_1, [10], ["The Red Thing", "left one"]),
             _line(1, 11, BOXES_1, 11, ["small box at the top"]),
             _line(2, 21, BOXES_2, "21", ["big one"], ids=["21", "22"])]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


# ---- the reference, written out ------------------------------------------------------------------------
def ref_preprocess(model, image):
    """ClipExecutor with square_size: Resize((S, S), bicubic), to RGB, ToTensor, Normalize."""
    size = model.image_size[0]
    cfg = model.preprocess_cfg
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                      lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])(image)


def ref_mask_row(model, image, box, v=0.2):
    """transform_box2token_base + generate_gaussian_mask_region, for the model's grid: row 0 of the mask."""
    size, (grid, _) = model.image_size[0], model.grid_size
    patch = size // grid
    scale0, scale1 = size / image.width, size / image.height
    x0, y0 = min(box[0] * scale0, size), min(box[1] * scale1, size)
    x1, y1 = min(box[2] * scale0, size), min(box[3] * scale1, size)
    start = max(math.ceil(x0 / patch), 1) - 1 + (max(math.ceil(y0 / patch), 1) - 1) * grid + 1
    end = max(math.ceil(x1 / patch), 1) + (max(math.ceil(y0 / patch), 1) - 1) * grid + 1
    h = (max(math.ceil(y1 / patch), 1) - 1) - (max(math.ceil(y0 / patch), 1) - 1)
    spans = [(start + i * grid, end + i * grid) for i in range(h + 1)]
    height, width = h + 1, end - start
    mask = np.zeros((height, width), dtype=np.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    for x in range(width):
        for y in range(height):
            mask[y, x] = np.exp(-0.5 * (np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / 100) ** 2)
    gauss = (mask - mask.min() + 0.000001) / (mask.max() + 0.000001 - mask.min()) * v
    row = torch.zeros(1 + grid * grid)
    for k, (a, b) in enumerate(spans):
        row[a:b] = torch.from_numpy(gauss[k])
    return row


def ref_picture(rep, image, box):
    """The reference's pixels for one box (left, top, right, bottom), by its own Pillow calls."""
    image = image.copy()
    if rep == "crop":
        return image.crop(box)
    if rep == "blur":
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).rectangle([box[:2], box[2:]], fill=255)
        blurred = image.filter(ImageFilter.GaussianBlur(100))
        blurred.paste(image, mask=mask)
        return blurred
    if rep == "circle":
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).ellipse([box[:2], box[2:]], outline="red", fill=255)
        blurred = image.filter(ImageFilter.GaussianBlur(100))
        blurred.paste(image, mask=mask)
        ImageDraw.Draw(blurred).ellipse([box[:2], box[2:]], outline="red", width=int(max(image.size) / 200))
        return blurred
    if rep == "shade":
        rgba = image.convert("RGBA")
        overlay = Image.new("RGBA", rgba.size, (240, 0, 30, 0))
        ImageDraw.Draw(overlay).rectangle((tuple(box[:2]), tuple(box[2:])), fill=(240, 0, 30, 127))
        return Image.alpha_composite(rgba, overlay).convert("RGB")
    raise AssertionError(rep)


_REF_FEATURES: dict = {}  # (image, box, representation) -> the reference's feature: each encoded once per module


def ref_feature(model, image_path, xywh, rep):
    """One box's unit image feature as the reference encodes it: one image a call."""
    key = (str(image_path), tuple(xywh), rep)
    if key not in _REF_FEATURES:
        image = Image.open(image_path).convert("RGB")
        x, y, w, h = xywh
        box = [max(x, 0), max(y, 0), min(x + w, image.width), min(y + h, image.height)]
        with torch.no_grad():
            if rep == "falip":
                row = ref_mask_row(model, image, box)
                assert row[0] == 0
                f = model.encode_image(ref_preprocess(model, image)[None], cls_bias=row[None, 1:], normalize=True)
            else:
                f = model.encode_image(ref_preprocess(model, ref_picture(rep, image, box))[None], normalize=True)
        _REF_FEATURES[key] = f[0]
    return _REF_FEATURES[key]


def ref_scores(model, image_path, boxes_xywh, raw, run):
    """Executor.__call__ with the sum aggregator: logit_scale * cos per box, summed over the representations."""
    reps = run.split("+")
    caption = f"a photo of {raw.lower()}"
    if "shade" in reps:
        caption = caption.lower() + " is in red color."
    with torch.no_grad():
        text = model.encode_text([caption], normalize=True)[0]
    total = torch.zeros(len(boxes_xywh))
    for rep in reps:
        feats = torch.stack([ref_feature(model, image_path, b, rep) for b in boxes_xywh])
        total += model.logit_scale * feats @ text
    return total.numpy()


def ref_iou(a, b):
    x1 = max(a[0], b[0])
    x2 = max(x1, min(a[0] + a[2], b[0] + b[2]))
    y1 = max(a[1], b[1])
    y2 = max(y1, min(a[1] + a[3], b[1] + b[3]))
    inter = (x2 - x1) * (y2 - y1)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


EXPRESSIONS = [  # (image, candidates, gold boxes, raw text)
    (1, BOXES_1, [BOXES_1[0]], "The Red Thing"),
    (1, BOXES_1, [BOXES_1[0]], "left one"),
    (1, BOXES_1, [BOXES_1[1]], "small box at the top"),
    (2, BOXES_2, [BOXES_2[0]], "big one"),
]


def _evaluate(main, data, tmp_path, *extra, runs=RUNS, name="r.json"):
    out = tmp_path / name
    code, stdout, err = main("evaluate", "--dataset", "refcoco", "--root", data / "images", "--annotations",
                             data / "a.jsonl", "--prompts", runs, "--model", MODEL, "--pretrained", "none",
                             "--device", "cpu", "--precision", "fp32", "--out", out, *extra)
    assert code == 0, err
    assert "representation" in stdout and "accuracy" in stdout
    assert not Path(str(out) + ".partial").exists()
    return json.loads(out.read_text())


# ---- tests -----------------------------------------------------------------------------------------------
def test_every_representation_equals_the_reference(main, data, tmp_path, model):
    report = _evaluate(main, data, tmp_path)
    assert list(report["runs"]) == RUNS.split(",") and report["n"] == 4 and report["images"] == 2
    for run, result in report["runs"].items():
        preds = result["predictions"]
        assert len(preds) == len(EXPRESSIONS)
        correct = 0
        for p, (image, boxes, gold, raw) in zip(preds, EXPRESSIONS):
            name = f"COCO_train2014_{image:012d}.jpg"
            assert p["file_name"] == name and p["text"] == raw.lower()
            assert p["boxes"] == [[x, y, x + w, y + h] for x, y, w, h in boxes]
            expected = ref_scores(model, data / "images" / name, boxes, raw, run)
            np.testing.assert_allclose(p["scores"], expected, atol=2e-5, rtol=0, err_msg=f"{run}: {raw}")
            probs = torch.from_numpy(expected).softmax(-1).numpy()
            np.testing.assert_allclose(p["probabilities"], probs, atol=1e-5)
            assert p["pred"] == int(np.argmax(p["probabilities"]))
            hits = [k for k, b in enumerate(boxes) if any(ref_iou(b, g) > 0.5 for g in gold)]
            assert p["gold"] == hits
            ok = any(ref_iou(boxes[p["pred"]], g) > 0.5 for g in gold)
            assert p["correct"] is ok
            correct += ok
        assert result["correct"] == correct and result["accuracy"] == pytest.approx(correct / len(EXPRESSIONS))


def test_reference_token_rule_differs_from_overlap_on_patch_edges(model):
    """Box x0 = 120 on a 240-wide image is model x 32, a patch edge: the reference also takes the patch before."""
    from pointfalip import foveal

    cfg = model.preprocess_config("squash")
    ref = foveal.from_box((120, 40, 220, 150), (240, 160), cfg, model.grid_size, rule="reclip")
    own = foveal.from_box((120, 40, 220, 150), (240, 160), cfg, model.grid_size)
    assert (ref > 0).sum() > (own > 0).sum()
    row = ref_mask_row(model, Image.new("RGB", (240, 160)), (120, 40, 220, 150))
    torch.testing.assert_close(ref.flatten(), row[1:], atol=1e-6, rtol=0)


def test_iou_by_hand():
    boxes = [(0, 0, 10, 10), (5, 0, 10, 10), (20, 20, 5, 5), (2.5, 2.5, 5, 5)]
    got = refcoco.iou_matrix(boxes, [(0, 0, 10, 10)])[:, 0]
    np.testing.assert_allclose(got, [1.0, 50 / 150, 0.0, 25 / 100])
    assert refcoco.coco_file_name("COCO_train2014_000000581857_16.jpg") == "COCO_train2014_000000581857.jpg"
    assert refcoco.coco_file_name("frame_7.png") == "frame_7.png"


@pytest.mark.parametrize("layout", ["dict", "list"])
def test_detections_in_both_layouts(main, data, tmp_path, model, layout):
    dets = {1: [[58, 12, 80, 70], [0, 0, 50, 50], [150, 100, 60, 50]], 2: []}  # image 2: none -> the whole image
    if layout == "dict":
        content = {str(k): v for k, v in dets.items()}
    else:
        content = [{"image_id": k, "box": b} for k, v in dets.items() for b in v]
    path = tmp_path / f"dets_{layout}.json"
    path.write_text(json.dumps(content))
    report = _evaluate(main, data, tmp_path, "--detections", path, runs="falip,crop")
    assert report["detections"] == str(path)
    for run, result in report["runs"].items():
        for p, (image, _, gold, raw) in zip(result["predictions"], EXPRESSIONS):
            boxes = dets[image] or [[0, 0, 410, 300]]
            assert p["boxes"] == [[x, y, x + w, y + h] for x, y, w, h in boxes]
            expected = ref_scores(model, data / "images" / p["file_name"], boxes, raw, run)
            np.testing.assert_allclose(p["scores"], expected, atol=2e-5, rtol=0)
            assert p["gold"] == [k for k, b in enumerate(boxes) if any(ref_iou(b, g) > 0.5 for g in gold)]
        # the shifted detection still counts for "the red thing" (IoU 0.90 > 0.5); the whole image does not
        assert result["predictions"][0]["gold"] == [0] and result["predictions"][3]["gold"] == []


def test_resume_after_an_interruption_gives_the_same_report(data, tmp_path, model, monkeypatch):
    dataset = refcoco.open_rec_dataset("refcoco", data / "images", data / "a.jsonl")
    full = refcoco.evaluate_rec(model, dataset, "falip,shade", out=tmp_path / "full.json", batch_size=1)
    out = tmp_path / "resumed.json"
    real = refcoco.score_image
    monkeypatch.setattr(refcoco, "score_image", interrupt_after(1, real))
    with pytest.raises(KeyboardInterrupt):
        refcoco.evaluate_rec(model, dataset, "falip,shade", out=out, batch_size=1)
    assert len(list(Path(str(out) + ".partial").glob("batch_*.npz"))) == 1
    calls = []
    monkeypatch.setattr(refcoco, "score_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = refcoco.evaluate_rec(model, dataset, "falip,shade", out=out, batch_size=1)
    assert len(calls) == 1  # the first image came from the cache
    assert resumed["runs"] == full["runs"]
    assert not Path(str(out) + ".partial").exists()


def test_each_image_is_encoded_once_per_representation(data, tmp_path, model, monkeypatch):
    dataset = refcoco.open_rec_dataset("refcoco", data / "images", data / "a.jsonl")
    assert [len(i.expressions) for i in dataset.images] == [3, 1] and len(dataset.images[0].boxes) == 4
    seen = []
    real = refcoco.encode_boxes
    monkeypatch.setattr(refcoco, "encode_boxes", lambda m, im, boxes, rep, cfg=None: seen.append(rep) or
                        real(m, im, boxes, rep, cfg))
    refcoco.evaluate_rec(model, dataset, "falip,crop,crop+blur", out=tmp_path / "r.json")
    assert sorted(seen) == sorted(["falip", "crop", "blur"] * 2)  # 2 images x 3 representations


# ---- bad input: one line, exit 2, nothing left behind ----------------------------------------------------
def _write_lines(folder: Path, lines) -> Path:
    path = folder / "bad.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


GOOD = _line(1, 10, BOXES_1, [10], ["the red thing"])


@pytest.mark.parametrize("lines,prompts,words", [
    ([GOOD, _line(3, 30, BOXES_1, 30, ["x"])], "falip", ["line 2", "COCO_train2014_000000000003.jpg",
                                                          "does not exist"]),
    ([_line(1, 10, [[200, 10, 80, 70]], 10, ["x"])], "falip", ["line 1", "outside"]),
    ([_line(1, 10, [[20, 10, 0, 70]], 10, ["x"])], "falip", ["line 1", "zero area"]),
    ([{**GOOD, "anns": []}], "falip", ["line 1", "no boxes"]),
    ([GOOD, '{"file_name": "COCO_x_1.jpg", '], "falip", ["line 2", "not valid json"]),
    ([GOOD, "[1, 2]"], "falip", ["line 2", "json object"]),
    ([{**GOOD, "ann_id": 99}], "falip", ["line 1", "matches none"]),
    ([GOOD], "falip,redcircle", ["unknown representation", "redcircle"]),
    ([GOOD], "crop+crop", ["twice"]),
])
def test_bad_input(main, data, tmp_path, lines, prompts, words):
    annotations = _write_lines(tmp_path, lines)
    out = tmp_path / "r.json"
    code, _, err = main("evaluate", "--dataset", "refcoco", "--root", data / "images", "--annotations", annotations,
                        "--prompts", prompts, "--model", MODEL, "--pretrained", "none", "--device", "cpu",
                        "--out", out)
    one_line_error(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_bad_detections_and_options(main, data, tmp_path):
    dets = tmp_path / "d.json"
    dets.write_text(json.dumps({"1": [[0, 0, 500, 20]]}))
    common = ("--root", data / "images", "--annotations", data / "a.jsonl", "--model", MODEL, "--pretrained", "none",
              "--device", "cpu", "--out", tmp_path / "r.json")
    one_line_error(*main("evaluate", "--dataset", "refcoco", *common, "--detections", dets)[::2],
                   "image_id 1", "outside")
    dets.write_text(json.dumps([{"image_id": 1}]))
    one_line_error(*main("evaluate", "--dataset", "refcoco", *common, "--detections", dets)[::2], "entry 0")
    one_line_error(*main("evaluate", "--dataset", "refcocog", *common, "--compare")[::2], "--compare")
    one_line_error(*main("evaluate", "--dataset", "refcoco+", "--root", data / "images", "--model", MODEL)[::2],
                   "--annotations")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_runs_are_parsed_strictly():
    assert refcoco.parse_runs("falip, crop+blur,shade") == ("falip", "crop+blur", "shade")
    assert refcoco.representations_of("shade+crop+falip") == ("falip", "crop", "shade")
    assert refcoco.caption("The Man", "crop+shade") == "a photo of the man is in red color."
    with pytest.raises(InputError, match="twice"):
        refcoco.parse_runs("crop,crop")
    with pytest.raises(InputError, match="comma-separated"):
        refcoco.parse_runs("crop,,blur")


# ---- the same pixels for refer / classify-image -----------------------------------------------------------
@pytest.mark.parametrize("rep", ["crop", "blur", "circle", "shade"])
def test_visual_prompts_make_the_reference_pixels(data, rep):
    from pointfalip import visual_prompts

    image = Image.open(data / "images" / "COCO_train2014_000000000002.jpg").convert("RGB")  # 410 px: 2-px circle
    for box in ((10.5, 20.25, 210.5, 120.25), (205, 150, 405, 299.5), (0, 0, 410, 300)):
        ours = np.asarray(visual_prompts.apply(rep, image, box))
        theirs = np.asarray(ref_picture(rep, image, list(box)))
        assert ours.shape == theirs.shape and (ours == theirs).all(), (rep, box)


def test_refer_with_shade_says_the_region_is_red(data, model):
    from pointfalip.regions import rank_boxes

    image = Image.open(data / "images" / "COCO_train2014_000000000001.jpg").convert("RGB")
    boxes = [(60, 10, 140, 80), (0, 0, 50, 50)]
    preds = rank_boxes(model, image, boxes, "the red thing", prompt="shade")
    pictures = torch.stack([model.preprocess(ref_picture("shade", image, list(b))) for b in boxes])
    with torch.no_grad():
        f = model.encode_image(pictures, normalize=True)
        t = model.encode_text(["the red thing is in red color."], normalize=True)[0]
    probs = (model.logit_scale * f @ t).softmax(-1)
    assert {p.label: p.probability for p in preds} == pytest.approx({"60,10,140,80": probs[0].item(),
                                                                     "0,0,50,50": probs[1].item()}, abs=1e-6)


def test_torchrun_two_ranks_equal_one_process(data, tmp_path, main):
    import os
    import subprocess
    import sys

    from conftest import TINY

    config = tmp_path / "pf-rec-16.json"
    config.write_text(json.dumps(TINY[MODEL]))
    args = ["evaluate", "--dataset", "refcoco", "--root", data / "images", "--annotations", data / "a.jsonl",
            "--prompts", "falip,blur", "--model", config, "--pretrained", "none", "--device", "cpu",
            "--precision", "fp32", "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pointfalip",
           *map(str, args), "--out", str(tmp_path / "ranks.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("representation") == 1  # rank 0 alone prints
    code, _, err = main(*args, "--out", tmp_path / "one.json")
    assert code == 0, err
    ranks, one = (json.loads((tmp_path / n).read_text()) for n in ("ranks.json", "one.json"))
    for run in ("falip", "blur"):
        for a, b in zip(ranks["runs"][run]["predictions"], one["runs"][run]["predictions"]):
            assert a["pred"] == b["pred"] and a["text"] == b["text"]
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    assert not (tmp_path / "ranks.json.partial").exists()
