"""Class names, templates, prompt files, and text features checked against hand computations."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_random

from pointfalip import InputError, prompts
from pointfalip.prompts import (build_prompts, class_names, humanize, list_label_sets, list_templates,
                                load_prompt_file, raw_class_names, templates, text_features)

PROMPT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"
V2_SCANOBJECTNN = PROMPT_DIR / "pointclip_v2_scanobjectnn_1000.json"


@pytest.fixture(scope="module")
def model():
    return load_random("pf-tiny-16")


def _hand_features(model, table):
    """CLIP's prompt ensembling written out: one prompt at a time."""
    rows = []
    for ps in table.values():
        feats = torch.stack([model.encode_text([p])[0] for p in ps])
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


@pytest.fixture
def tagged(model, monkeypatch):
    """The random model posing as pretrained weights, so that its features are cacheable."""
    monkeypatch.setattr(model, "pretrained", "test-tag")
    return model


# ---- class names ---------------------------------------------------------------------------------------
def test_label_sets_sizes_and_order():
    assert set(list_label_sets()) == {"modelnet40", "modelnet10", "scanobjectnn"}
    m40, m10, sonn = (raw_class_names(s) for s in ("modelnet40", "modelnet10", "scanobjectnn"))
    assert (len(m40), len(m10), len(sonn)) == (40, 10, 15)
    assert len(set(m40)) == 40 and len(set(m10)) == 10 and len(set(sonn)) == 15
    # ModelNet releases are alphabetical; ScanObjectNN's is not.
    assert m40 == sorted(m40) and m10 == sorted(m10)
    assert set(m10) <= set(m40)
    assert (m40[0], m40[15], m40[23], m40[28], m40[36], m40[39]) == (
        "airplane", "flower_pot", "night_stand", "range_hood", "tv_stand", "xbox")
    assert (m10[0], m10[6], m10[9]) == ("bathtub", "night_stand", "toilet")
    assert sonn[:5] == ["bag", "bin", "box", "cabinet", "chair"]
    assert (sonn[9], sonn[10], sonn[14]) == ("table", "bed", "toilet")


def test_class_names_are_readable_in_the_same_order():
    raw, nice = raw_class_names("modelnet40"), class_names("modelnet40")
    assert len(nice) == len(raw)
    assert nice[15] == "flower pot" and nice[16] == "glass box" and nice[23] == "nightstand"
    assert nice[28] == "range hood" and nice[36] == "tv stand"
    assert all("_" not in n for n in nice)
    assert [n for n, r in zip(nice, raw) if "_" not in r] == [r for r in raw if "_" not in r]


def test_label_set_names_are_case_insensitive():
    assert raw_class_names(" ModelNet10 ") == raw_class_names("modelnet10")


def test_returned_lists_are_copies():
    raw_class_names("modelnet40").append("oops")
    templates("depth").clear()
    assert len(raw_class_names("modelnet40")) == 40 and templates("depth")


@pytest.mark.parametrize("raw, nice", [
    ("flower_pot", "flower pot"), ("night_stand", "nightstand"), ("tv_stand", "tv stand"),
    ("range_hood", "range hood"), ("glass_box", "glass box"), ("chair", "chair"),
    ("  coffee__mug ", "coffee mug"), ("Night_Stand", "nightstand"), ("night stand", "nightstand"),
    ("traffic light", "traffic light"),
])
def test_humanize(raw, nice):
    assert humanize(raw) == nice


@pytest.mark.parametrize("name", ["modelnet41", "", "shapenet"])
def test_unknown_label_set(name):
    with pytest.raises(InputError, match="unknown label set"):
        raw_class_names(name)
    with pytest.raises(ValueError):
        class_names(name)


# ---- templates -----------------------------------------------------------------------------------------
def test_templates():
    assert {"depth", "pointclip", "photo"} <= set(list_templates())
    assert templates("pointclip") == ["point cloud depth map of a {}."]
    depth = templates()
    assert depth == templates("depth") and 8 <= len(depth) <= 12
    assert "point cloud depth map of a {}." in depth
    assert "a photo of a {}." in templates("photo")
    for name in list_templates():
        for t in templates(name):
            assert t.count("{}") == 1 and t.format("chair") == t.replace("{}", "chair")
    with pytest.raises(InputError, match="unknown template set"):
        templates("sketch")


def test_build_prompts_from_templates():
    out = build_prompts(["chair", "night_stand"], "pointclip")  # PointCLIP's own rule: underscores to spaces
    assert out == {"chair": ["point cloud depth map of a chair."],
                   "night_stand": ["point cloud depth map of a night stand."]}
    assert build_prompts(["night_stand"], "depth")["night_stand"][0] == "point cloud depth map of a nightstand."
    out = build_prompts(["flower_pot"], ["a {}.", "the {} here."])
    assert out == {"flower_pot": ["a flower pot.", "the flower pot here."]}
    assert build_prompts(["cup"], "an image of a {}") == {"cup": ["an image of a cup"]}
    out = build_prompts(class_names("modelnet10"))
    assert list(out) == class_names("modelnet10")
    assert out["sofa"] == [t.format("sofa") for t in templates("depth")]


def test_build_prompts_bad_input():
    with pytest.raises(InputError, match="no labels"):
        build_prompts([])
    with pytest.raises(InputError, match="duplicate"):
        build_prompts(["cup", "cup"])
    with pytest.raises(InputError, match="placeholder"):
        build_prompts(["cup"], ["a photo"])
    with pytest.raises(InputError, match="unknown template set"):
        build_prompts(["cup"], "nonexistent")


# ---- prompt files --------------------------------------------------------------------------------------
def _write(tmp_path, data, name="prompts.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_build_prompts_from_prompt_file(tmp_path):
    table = {"chair": ["a chair.", "a seat."], "Night Stand": ["a bedside table."], "flower pot": ["a pot."],
             "lamp": ["a lamp."]}
    path = _write(tmp_path, table)
    assert load_prompt_file(path) == table
    out = build_prompts(["night_stand", "chair", "flower_pot"], prompt_file=path)
    assert list(out) == ["night_stand", "chair", "flower_pot"]
    assert out == {"night_stand": ["a bedside table."], "chair": ["a chair.", "a seat."],
                   "flower_pot": ["a pot."]}
    assert build_prompts(["lamp"], prompt_file=table) == {"lamp": ["a lamp."]}  # an in-memory mapping


def test_exact_key_wins_over_humanized(tmp_path):
    path = _write(tmp_path, {"tv stand": ["humanized"], "tv_stand": ["exact"]})
    assert build_prompts(["tv_stand"], prompt_file=path) == {"tv_stand": ["exact"]}
    assert build_prompts(["TV Stand"], prompt_file=path) == {"TV Stand": ["humanized"]}


@pytest.mark.parametrize("data, match", [
    (["a chair."], "must map class names"),
    ({"chair": []}, "non-empty list"),
    ({"chair": "a chair."}, "non-empty list"),
    ({"chair": ["a chair.", 3]}, "not a non-empty string"),
    ({}, "no classes"),
    ("{not json", "not valid JSON"),
])
def test_bad_prompt_files(tmp_path, data, match):
    path = _write(tmp_path, data)
    with pytest.raises(InputError, match=match):
        load_prompt_file(path)
    with pytest.raises(InputError):
        build_prompts(["chair"], prompt_file=path)


def test_prompt_file_missing_label_or_file(tmp_path):
    path = _write(tmp_path, {"chair": ["a chair."]})
    with pytest.raises(InputError, match="label 'sofa' is not in"):
        build_prompts(["chair", "sofa"], prompt_file=path)
    with pytest.raises(InputError, match="does not exist"):
        load_prompt_file(tmp_path / "absent.json")


@pytest.mark.skipif(not V2_SCANOBJECTNN.is_file(), reason="shared PointCLIP V2 prompt file is absent")
def test_shared_pointclip_v2_prompt_file():
    table = load_prompt_file(V2_SCANOBJECTNN)
    assert list(table) == raw_class_names("scanobjectnn")
    assert all(len(ps) == 1200 for ps in table.values())
    out = build_prompts(class_names("scanobjectnn"), prompt_file=V2_SCANOBJECTNN)
    assert out["bag"] == table["bag"] and len(out) == 15


# ---- text features -------------------------------------------------------------------------------------
def test_text_features_match_hand_ensembling(model, tmp_path):
    table = build_prompts(["chair", "night_stand", "cup"], ["a {}.", "a photo of a {}.", "a depth map of a {}."])
    table["cup"] = table["cup"][:1]  # uneven prompt counts per class
    feats = text_features(model, table, cache_dir=tmp_path)
    expected = _hand_features(model, table)
    assert feats.shape == (3, model.clip.text_projection.shape[1]) and feats.dtype == torch.float32
    assert feats.device == model.device
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    # the mean of normalised features differs from the normalised mean of raw features in general
    raw_mean = F.normalize(model.encode_text(table["chair"]).mean(0), dim=-1)
    assert not torch.allclose(raw_mean, expected[0], atol=1e-4)


def test_text_features_order_follows_prompts(model):
    table = {"a": ["a chair."], "b": ["a lamp.", "a desk."]}
    swapped = {"b": table["b"], "a": table["a"]}
    f1, f2 = text_features(model, table), text_features(model, swapped)
    torch.testing.assert_close(f1, f2.flip(0))


def test_no_cache_for_random_weights(model, tmp_path, monkeypatch):
    assert model.pretrained == "none"
    monkeypatch.setenv("POINTFALIP_CACHE", str(tmp_path / "env"))
    text_features(model, {"chair": ["a chair."]}, cache_dir=tmp_path / "explicit")
    text_features(model, {"chair": ["a chair."]})
    assert not any(tmp_path.rglob("*"))


def test_cache_round_trip(tagged, tmp_path, monkeypatch):
    table = build_prompts(["chair", "sofa"], "photo")
    first = text_features(tagged, table, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    torch.testing.assert_close(first, _hand_features(tagged, table), atol=1e-5, rtol=1e-5)

    def fail(*args, **kwargs):
        raise AssertionError("encode_text called although the features are cached")

    monkeypatch.setattr(tagged, "encode_text", fail)
    second = text_features(tagged, table, cache_dir=tmp_path)
    assert torch.equal(first, second) and second.dtype == torch.float32
    # other prompts, other order, or another precision are other keys
    with pytest.raises(AssertionError, match="encode_text called"):
        text_features(tagged, {"sofa": table["sofa"], "chair": table["chair"]}, cache_dir=tmp_path)
    monkeypatch.setattr(tagged, "precision", "bf16")
    with pytest.raises(AssertionError, match="encode_text called"):
        text_features(tagged, table, cache_dir=tmp_path)


def test_cache_dir_from_environment(tagged, tmp_path, monkeypatch):
    monkeypatch.setenv("POINTFALIP_CACHE", str(tmp_path))
    text_features(tagged, {"chair": ["a chair."]})
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    text_features(tagged, {"cup": ["a cup."]}, cache_dir=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_corrupt_cache_is_ignored_and_rewritten(tagged, tmp_path):
    table = {"chair": ["a chair.", "a seat."], "lamp": ["a lamp."]}
    good = text_features(tagged, table, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"\x00garbage that is not safetensors")
    again = text_features(tagged, table, cache_dir=tmp_path)
    torch.testing.assert_close(again, good)
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(str(path))["text_features"], good)


def test_cache_with_wrong_shape_is_ignored(tagged, tmp_path):
    from safetensors.torch import save_file

    table = {"chair": ["a chair."], "lamp": ["a lamp."]}
    good = text_features(tagged, table, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    save_file({"text_features": torch.zeros(5, 7)}, str(path))
    torch.testing.assert_close(text_features(tagged, table, cache_dir=tmp_path), good)


def test_cache_key_tracks_local_checkpoint(model, tmp_path, monkeypatch):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"1234")
    monkeypatch.setattr(model, "pretrained", str(ckpt))
    table = {"chair": ["a chair."]}
    key = prompts.cache_key(model, table)
    assert prompts.cache_key(model, table) == key
    ckpt.write_bytes(b"12345")  # same path, other contents
    assert prompts.cache_key(model, table) != key


def test_text_features_bad_prompts(model):
    with pytest.raises(InputError):
        text_features(model, {})
    with pytest.raises(InputError):
        text_features(model, {"chair": []})


def test_encode_is_build_then_features(model):
    feats = prompts.encode(model, ["chair", "cup"], "pointclip")
    torch.testing.assert_close(feats, _hand_features(model, build_prompts(["chair", "cup"], "pointclip")),
                               atol=1e-5, rtol=1e-5)


# ModelNet40's shape_names.txt, written out here so that the check does not read the package's own list
MODELNET40 = ("airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door dresser flower_pot "
              "glass_box guitar keyboard lamp laptop mantel monitor night_stand person piano plant radio range_hood "
              "sink sofa stairs stool table tent toilet tv_stand vase wardrobe xbox").split()


class _RecordingModel:
    """Stands in for FalipCLIP where only the prompt strings matter: records what it is asked to encode."""

    name, pretrained, precision, device = "recorder", "none", "fp32", torch.device("cpu")
    image_size = (224, 224)

    def __init__(self):
        self.texts: list[str] = []
        self.resolve_layers = lambda layers: list(layers)

    def encode_text(self, texts, normalize=False):
        self.texts.extend(texts)
        return torch.randn(len(texts), 8)


def test_pointclip_preset_prompts_are_pointclips_for_all_modelnet40_classes():
    from pointfalip import Recognizer

    model = _RecordingModel()
    rec = Recognizer(model, dataset="modelnet40", preset="pointclip", falip=False)
    reference = ["point cloud depth map of a {}.".format(name.replace("_", " ")) for name in MODELNET40]
    assert model.texts == reference
    assert len(rec.labels) == 40 and rec.labels[MODELNET40.index("night_stand")] == "nightstand"
