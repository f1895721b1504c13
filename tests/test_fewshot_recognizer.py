"""Few-shot caches inside the Recognizer's one scoring step, and the `fewshot build` / `--fewshot` commands."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY, load_random, one_line_error

from pointfalip import Recognizer, fewshot
from pointfalip.errors import InputError

LABELS = ["box", "plank", "rod"]


@pytest.fixture(scope="module")
def model():
    return load_random("pf-tiny-16")


def shape(kind: str, seed: int, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = {"box": (1, 1, 1), "plank": (2, 0.2, 1), "rod": (0.15, 2, 0.15)}[kind]
    return (rng.uniform(-1, 1, (n, 3)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def shots():
    clouds = [shape(k, s) for k in LABELS for s in range(3)]
    targets = [i for i in range(len(LABELS)) for _ in range(3)]
    return clouds, targets


def make_cache(rec, clouds, targets, alpha=1.0, beta=5.5):
    feats = rec.embed(clouds)
    return fewshot.build_cache(feats, targets, LABELS, rec.view_weights(feats.shape[1]),
                               rec.fewshot_metadata(3, 400), alpha=alpha, beta=beta)


def test_cache_term_equals_tip_adapters_formula(model, shots):
    """Tip-Adapter's logits written out element by element in float64: per-view cosines averaged over the views,
    the fused query and keys normalised by hand, one exp(-beta (1 - cos)) per (query, shot), added to the column
    named like the shot's label (no column: nothing; a label without shots: its zero-shot logit alone)."""
    plain = Recognizer(model, labels=LABELS, cache_dir=False)
    cache = make_cache(plain, *shots, alpha=2.0, beta=3.0)
    names = ["rod", "sphere", "box"]
    rec = Recognizer(model, labels=names, cache_dir=False, fewshot=cache)
    queries = [shape("box", 10), shape("rod", 11)]
    feats = rec.embed(queries).double().numpy()  # (B, V, D), each view's feature unit-norm
    shot_feats = plain.embed(shots[0]).double().numpy()
    text = rec.text.double().numpy()  # (C, D): one unit text feature a name
    scale = float(model.logit_scale)

    def fused(views):
        total = np.zeros(views.shape[1])
        for f in views:
            total += f / len(views)
        return total / np.sqrt(total @ total)

    expected = np.zeros((len(queries), len(names)))
    for b in range(len(queries)):
        q = fused(feats[b])
        for c, name in enumerate(names):
            cosines = [float(feats[b, v] @ text[c]) for v in range(feats.shape[1])]
            expected[b, c] = scale * sum(cosines) / len(cosines)
            for k, target in enumerate(shots[1]):
                if LABELS[target] == name:
                    expected[b, c] += 2.0 * np.exp(-3.0 * (1.0 - q @ fused(shot_feats[k])))
    got = rec.logits(rec.embed(queries)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    zero_shot = Recognizer(model, labels=names, cache_dir=False).logits(rec.embed(queries)).double().numpy()
    np.testing.assert_allclose(got[:, 1], zero_shot[:, 1], rtol=1e-6)  # "sphere" has no shots
    assert (got[:, [0, 2]] > zero_shot[:, [0, 2]]).all()  # a positive alpha only adds


def test_a_shot_as_query_comes_back_with_its_label(model, shots):
    rec = Recognizer(model, labels=LABELS, cache_dir=False)
    rec.use_fewshot(make_cache(rec, *shots, alpha=1000.0, beta=50.0))
    preds = rec.classify(shots[0], top_k=1)
    assert [p[0].label for p in preds] == [LABELS[t] for t in shots[1]]


def test_saved_cache_scores_alike_and_foreign_settings_are_refused(model, shots, tmp_path):
    rec = Recognizer(model, labels=LABELS, cache_dir=False)
    cache = make_cache(rec, *shots)
    path = tmp_path / "objects.fewshot"
    fewshot.save_cache(path, cache)
    queries = [shape("plank", 20)]
    a = Recognizer(model, labels=LABELS, cache_dir=False, fewshot=cache).logits(rec.embed(queries))
    b = Recognizer(model, labels=LABELS, cache_dir=False, fewshot=path).logits(rec.embed(queries))
    assert torch.equal(a, b)
    with pytest.raises(InputError, match="falip"):
        Recognizer(model, labels=LABELS, falip=False, fewshot=path)
    with pytest.raises(InputError, match="preset_hash"):
        Recognizer(model, labels=LABELS, preset="pointclip", fewshot=path)
    with pytest.raises(InputError, match="none of the labels"):
        Recognizer(model, labels=["cat", "dog"], fewshot=path)


def test_adapter_in_the_scoring_step(model, shots):
    rec = Recognizer(model, labels=LABELS, cache_dir=False)
    cache = make_cache(rec, *shots)
    feats = rec.embed(shots[0])
    cache.adapter = fewshot.train_adapter(feats, cache.targets, rec.text, rec.view_weights(feats.shape[1]),
                                          model.logit_scale, epochs=3, seed=0)
    with_adapter = Recognizer(model, labels=LABELS, cache_dir=False, fewshot=cache)
    w = rec.view_weights(feats.shape[1])
    with torch.no_grad():
        expected = model.logit_scale * fewshot.adapter_scores(cache.adapter, feats, rec.text, w) + \
            fewshot.cache_logits(fewshot.fuse_views(feats, w), cache, LABELS)
    torch.testing.assert_close(with_adapter.logits(feats), expected)


def test_a_built_adapter_is_trained_on_the_recognizers_own_scores(model, shots):
    """cache_from_features trains through Recognizer.adapter_logits: the same adapter as training on the text
    features and view weights directly, from the same seed."""
    rec = Recognizer(model, labels=LABELS, cache_dir=False)
    feats = rec.embed(shots[0])
    built = fewshot.cache_from_features(rec, feats, shots[1], 3, 400, adapter=True, adapter_epochs=3, seed=5)
    direct = fewshot.train_adapter(feats, torch.tensor(shots[1]), rec.text, torch.ones(feats.shape[1]),
                                   model.logit_scale, epochs=3, seed=5)
    for name, value in direct.state_dict().items():
        torch.testing.assert_close(built.adapter.state_dict()[name], value)


# ---- the command line ---------------------------------------------------------------------------------------
@pytest.fixture
def tiny_json(tmp_path):
    path = tmp_path / "pf-fs-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return path


@pytest.fixture
def objects(tmp_path):
    root = tmp_path / "objects"
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for s in range(3):
            np.save(root / label / f"{s}.npy", shape(label, 100 + s))
    return root


def test_build_then_classify_scene_and_evaluate_with_the_cache(main, objects, tiny_json, tmp_path):
    model_opts = ["--model", tiny_json, "--pretrained", "none", "--precision", "fp32"]
    out = tmp_path / "objects.fewshot"
    code, stdout, err = main("fewshot", "build", "--dataset", "folder", "--root", objects, "--shots", "2",
                             "--tune", "-o", out, *model_opts, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["per_label"] == {"box": 2, "plank": 2, "rod": 2} and out.is_file()
    cache = fewshot.load_cache(out)
    assert (cache.alpha, cache.beta) == (summary["alpha"], summary["beta"])
    query = tmp_path / "query.npy"
    np.save(query, shape("rod", 7))
    code, stdout, err = main("classify", query, "--labels", "rod,box,sphere", "--fewshot", out, *model_opts,
                             "--json")
    assert code == 0, err
    rec = Recognizer(load_random(str(tiny_json)), labels=["rod", "box", "sphere"], cache_dir=False, fewshot=out)
    expected = rec.classify(np.load(query))
    got = json.loads(stdout)[0]["predictions"]
    assert [p["label"] for p in got] == [p.label for p in expected]
    assert [p["score"] for p in got] == pytest.approx([p.probability for p in expected], abs=1e-5)
    code, stdout, err = main("evaluate", "--dataset", "folder", "--root", objects, "--fewshot", out,
                             "--out", tmp_path / "r.json", *model_opts, "--json")
    assert code == 0, err
    assert list(json.loads(stdout)["runs"]) == ["falip+fewshot"]
    code, _, err = main("evaluate", "--dataset", "folder", "--root", objects, "--fewshot", out, "--compare",
                        *model_opts)
    one_line_error(code, err, "--compare")


def test_fewshot_bad_input(main, objects, tiny_json, tmp_path):
    model_opts = ["--model", tiny_json, "--pretrained", "none"]
    (objects / "empty_class").mkdir()
    code, _, err = main("fewshot", "build", "--dataset", "folder", "--root", objects, "-o", tmp_path / "a.fewshot",
                        *model_opts)
    one_line_error(code, err, "empty_class")
    assert not (tmp_path / "a.fewshot").exists() and not list(tmp_path.glob(".*.tmp"))
    (objects / "empty_class").rmdir()
    code, _, err = main("fewshot", "build", "--dataset", "folder", "--root", objects, "--shots", "0",
                        "-o", tmp_path / "a.fewshot", *model_opts)
    one_line_error(code, err, "--shots")
    truncated = tmp_path / "t.fewshot"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
    query = tmp_path / "q.npy"
    np.save(query, shape("box", 3))
    code, _, err = main("classify", query, "--labels", "box", "--fewshot", truncated, *model_opts)
    one_line_error(code, err, "t.fewshot")
    good = tmp_path / "good.fewshot"
    assert main("fewshot", "build", "--dataset", "folder", "--root", objects, "--shots", "1", "-o", good,
                *model_opts)[0] == 0
    code, _, err = main("classify", query, "--labels", "box", "--fewshot", good, "--preset", "pointclip",
                        *model_opts)
    one_line_error(code, err, "preset")


def test_evaluate_shots_protocol(main, tiny_json, tmp_path):
    """--shots draws from the train folder only, the same examples for the same seed, and scores every seed's
    cache against the test set encoded once; the zero-shot runs are those of a plain evaluation."""
    for split, seeds in (("train", range(4)), ("test", range(10, 12))):
        for label in LABELS:
            (tmp_path / split / label).mkdir(parents=True)
            for s in seeds:
                np.save(tmp_path / split / label / f"{s}.npy", shape(label, 1000 * len(split) + s))
    model_opts = ["--model", tiny_json, "--pretrained", "none", "--precision", "fp32"]
    args = ["evaluate", "--dataset", "folder", "--root", tmp_path / "test", *model_opts, "--json"]
    code, out, err = main(*args, "--compare", "--shots", "2", "--seeds", "1,2", "--train-root", tmp_path / "train",
                          "--out", tmp_path / "fs.json")
    assert code == 0, err
    report = json.loads(out)
    assert list(report["runs"]) == ["falip", "baseline", "falip+fewshot", "baseline+fewshot"]
    examples = report["fewshot"]["examples"]
    assert set(examples) == {"1", "2"} and all(len(v) == 6 for v in examples.values())
    assert all(str(tmp_path / "train") in src for v in examples.values() for src in v)
    code, out, err = main(*args, "--compare", "--out", tmp_path / "zs.json")
    zero_shot = json.loads(out)
    for run in ("falip", "baseline"):
        assert report["runs"][run]["predictions"] == zero_shot["runs"][run]["predictions"]
    run = report["runs"]["falip+fewshot"]
    accs = [run["seeds"][s]["overall_accuracy"] for s in ("1", "2")]
    assert run["overall_accuracy"] == pytest.approx(np.mean(accs))
    assert run["overall_accuracy_std"] == pytest.approx(np.std(accs))
    from pointfalip.datasets import open_dataset

    model = load_random(str(tiny_json))
    train = open_dataset("folder", tmp_path / "train")
    test = open_dataset("folder", tmp_path / "test")
    rec = Recognizer(model, labels=list(train.classes), cache_dir=False)
    cache = fewshot.build_from_dataset(rec, train, 2, seed=2, progress=False)
    with_cache = Recognizer(model, labels=list(test.classes), cache_dir=False, fewshot=cache)
    preds = [LABELS.index(p[0].label) for p in with_cache.classify([test[i][0] for i in range(len(test))], top_k=1)]
    assert run["seeds"]["2"]["predictions"] == preds
    code, _, err = main(*args, "--shots", "2", "--out", tmp_path / "same.json")
    one_line_error(code, err, "evaluated items themselves")
