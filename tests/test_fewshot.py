"""Few-shot caches, leave-one-out tuning, PointCLIP's inter-view adapter and cache files, against hand computations."""
import inspect
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pointfalip import fewshot
from pointfalip.errors import InputError
from pointfalip.fewshot import (FewShotCache, InterViewAdapter, adapter_scores, build_cache, cache_logits,
                                cache_metadata, check_compatible, fuse_views, load_cache, save_cache, select_shots,
                                settings_hash, smooth_cross_entropy, train_adapter, tune)


def _unit(rng: np.random.Generator, *shape) -> np.ndarray:
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _small_cache(seed=0, k=7, v=3, d=5, labels=("a", "b", "c")) -> tuple[FewShotCache, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    view_feats = _unit(rng, k, v, d)
    weights = rng.uniform(0.5, 2.0, v)
    targets = np.arange(k) % len(labels)
    cache = build_cache(torch.tensor(view_feats, dtype=torch.float32), targets, list(labels),
                        torch.tensor(weights, dtype=torch.float32))
    return cache, view_feats, weights


def _metadata(**changes) -> dict:
    values = dict(model="ViT-B-16", pretrained="openai", precision="fp32", preset="pointclip_v2",
                  settings={"projection": "realistic", "views": "pointclip_v2"}, falip=True, shots=4, points=1024,
                  up_axis="y")
    values.update(changes)
    return cache_metadata(**values)


# ---- fusion and cache logits --------------------------------------------------------------------------------
def test_keys_are_the_normalised_weighted_sum_of_view_features():
    cache, view_feats, weights = _small_cache()
    for k in range(view_feats.shape[0]):
        fused = sum(weights[v] * view_feats[k, v] for v in range(view_feats.shape[1]))
        np.testing.assert_allclose(cache.keys[k].numpy(), fused / np.linalg.norm(fused), atol=1e-6)
    np.testing.assert_allclose(fuse_views(cache.view_keys, torch.tensor(weights)).numpy(), cache.keys.numpy(),
                               atol=1e-6)


def test_cache_logits_equal_the_formula_by_hand():
    cache, _, _ = _small_cache()
    rng = np.random.default_rng(1)
    query = _unit(rng, 4, 5)
    class_labels = ["c", "x", "a"]  # "b" of the cache is not asked for, "x" has no examples
    alpha, beta = 1.7, 3.2
    got = cache_logits(torch.tensor(query, dtype=torch.float32), cache, class_labels, alpha=alpha, beta=beta)
    keys = cache.keys.numpy().astype(np.float64)
    expected = np.zeros((4, 3))
    for i in range(4):
        for j, name in enumerate(class_labels):
            for k in range(len(keys)):
                if cache.labels[int(cache.targets[k])] == name:
                    expected[i, j] += alpha * math.exp(-beta * (1.0 - float(query[i] @ keys[k])))
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(got[:, 1] == 0)


def test_cache_logits_use_the_cache_alpha_beta_by_default():
    cache, _, _ = _small_cache()
    cache.alpha, cache.beta = 2.5, 1.5
    query = cache.keys[:2]
    np.testing.assert_allclose(cache_logits(query, cache, cache.labels).numpy(),
                               cache_logits(query, cache, cache.labels, alpha=2.5, beta=1.5).numpy())
    assert fewshot.DEFAULT_ALPHA == 1.0 and fewshot.DEFAULT_BETA == 5.5


def test_a_shot_used_as_query_gets_its_own_label_with_a_large_alpha():
    rng = np.random.default_rng(3)
    labels = ["chair", "table", "lamp", "sofa"]
    k, d = 12, 64
    cache = build_cache(torch.tensor(_unit(rng, k, 2, d), dtype=torch.float32), np.arange(k) % 4, labels,
                        torch.ones(2))
    zero_shot = torch.tensor(rng.standard_normal((k, 4)) * 5, dtype=torch.float32)
    logits = zero_shot + cache_logits(cache.keys, cache, labels, alpha=1000.0)
    assert logits.argmax(dim=1).tolist() == cache.targets.tolist()


def test_a_query_with_a_wrong_feature_size_is_an_input_error():
    cache, _, _ = _small_cache()
    with pytest.raises(InputError, match="match the few-shot cache"):
        cache_logits(torch.zeros(2, 7), cache, cache.labels)


# ---- leave-one-out tuning -----------------------------------------------------------------------------------
def _grid_search(keys, targets, zero_shot, alphas, betas, leave_one_out=True):
    """Accuracy-maximising (alpha, beta) with explicit loops; ties to the smallest alpha, then beta."""
    k, c = zero_shot.shape
    best, best_correct = None, -1
    for alpha in sorted(alphas):
        for beta in sorted(betas):
            correct = 0
            for i in range(k):
                scores = zero_shot[i].astype(np.float64).copy()
                for j in range(k):
                    if leave_one_out and j == i:
                        continue
                    scores[targets[j]] += alpha * math.exp(-beta * (1.0 - float(keys[i] @ keys[j])))
                correct += int(np.argmax(scores) == targets[i])
            if correct > best_correct:
                best, best_correct = (alpha, beta), correct
    return best


def _tuning_case(seed, spread):
    """Clusters around one centre per class; zero-shot logits that get a third of the shots wrong."""
    rng = np.random.default_rng(seed)
    c, per, d = 3, 4, 16
    centres = _unit(rng, c, d)
    targets = np.repeat(np.arange(c), per)
    view_feats = centres[targets][:, None, :] + spread * rng.standard_normal((c * per, 2, d))
    view_feats /= np.linalg.norm(view_feats, axis=-1, keepdims=True)
    cache = build_cache(torch.tensor(view_feats, dtype=torch.float32), targets, ["a", "b", "c"], torch.ones(2))
    zero_shot = np.eye(c)[targets] * 2.0
    wrong = np.arange(0, c * per, 3)
    zero_shot[wrong] = np.eye(c)[(targets[wrong] + 1) % c] * 2.0 + 0.3 * rng.random((len(wrong), c))
    return cache, zero_shot


GRID = ([0.0, 0.5, 1.0, 2.0, 4.0], [0.5, 2.0, 5.5, 10.0])


def test_tuning_matches_an_independent_leave_one_out_search():
    cache, zero_shot = _tuning_case(seed=4, spread=0.15)
    got = tune(cache, torch.tensor(zero_shot), grid=GRID)
    expected = _grid_search(cache.keys.double().numpy(), cache.targets.numpy(), zero_shot, *GRID)
    assert got == expected
    assert got[0] > 0  # tight clusters: the held-out neighbours do fix the wrong zero-shot answers


def test_tuning_never_lets_a_shot_score_itself():
    # Features with no class structure: only a shot's own key could fix its wrong zero-shot answer.
    cache, zero_shot = _tuning_case(seed=5, spread=50.0)
    keys, targets = cache.keys.double().numpy(), cache.targets.numpy()
    with_self = _grid_search(keys, targets, zero_shot, *GRID, leave_one_out=False)
    held_out = _grid_search(keys, targets, zero_shot, *GRID)
    assert with_self != held_out and with_self[0] > 0
    assert tune(cache, torch.tensor(zero_shot), grid=GRID) == held_out == (0.0, 0.5)


def test_tuning_cannot_see_query_labels():
    assert list(inspect.signature(tune).parameters) == ["cache", "zero_shot_logits", "grid"]
    cache, zero_shot = _tuning_case(seed=4, spread=0.15)
    first = tune(cache, torch.tensor(zero_shot), grid=GRID)
    rng = np.random.default_rng(0)
    for _ in range(3):  # whatever (wrong) labels a test set carries, the choice is the same
        query_labels = rng.integers(0, 3, size=50)
        assert query_labels is not None and tune(cache, torch.tensor(zero_shot), grid=GRID) == first


def test_tuning_with_one_shot_per_label_keeps_the_defaults():
    cache, _, _ = _small_cache(k=3)
    assert tune(cache, torch.zeros(3, 3)) == (fewshot.DEFAULT_ALPHA, fewshot.DEFAULT_BETA)
    with pytest.raises(InputError, match="zero-shot logits"):
        tune(cache, torch.zeros(3, 4))


def test_the_default_grid_holds_zero_and_the_defaults():
    alphas, betas = fewshot.DEFAULT_GRID
    assert 0.0 in alphas and fewshot.DEFAULT_ALPHA in alphas and fewshot.DEFAULT_BETA in betas


# ---- the inter-view adapter ---------------------------------------------------------------------------------
def _reference_adapter(adapter: InterViewAdapter, feats: np.ndarray, train: bool = False) -> np.ndarray:
    """PointCLIP's Adapter.forward re-derived with numpy (dropout off) on the module's own weights."""
    s = {name: value.detach().double().numpy() for name, value in adapter.state_dict().items()}
    b, v, d = feats.shape

    def bn(x, prefix):
        if train:
            mean, var = x.mean(axis=0), x.var(axis=0)
        else:
            mean, var = s[prefix + ".running_mean"], s[prefix + ".running_var"]
        return (x - mean) / np.sqrt(var + 1e-5) * s[prefix + ".weight"] + s[prefix + ".bias"]

    x = feats * s["fusion_ratio"][None, :, None]
    x = bn(x.reshape(b * v, d), "view_norm").reshape(b, v * d)
    g = np.maximum(bn(x @ s["global_linear.weight"].T + s["global_linear.bias"], "global_norm"), 0)
    h = np.maximum(g @ s["expand_hidden.weight"].T + s["expand_hidden.bias"], 0)
    a = np.maximum(h @ s["expand_views.weight"].T + s["expand_views.bias"], 0)
    return (adapter.ratio * a + (1 - adapter.ratio) * feats.reshape(b, v * d)).reshape(b, v, d)


def _adapter_data(seed=0, k=24, v=3, d=8, c=4):
    rng = np.random.default_rng(seed)
    text = _unit(rng, c, d)
    targets = np.arange(k) % c
    feats = text[targets][:, None, :] * 0.5 + rng.standard_normal((k, v, d))
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    return (torch.tensor(feats, dtype=torch.float32), torch.tensor(targets), torch.tensor(text, dtype=torch.float32))


def _reference_logits(adapter, feats, text, scale):
    """PointCLIP's logits: concatenated adapted views, normalised, against the text repeated once per view."""
    out = _reference_adapter(adapter, feats.double().numpy()).reshape(len(feats), -1)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    rep = np.tile(text.double().numpy(), (1, feats.shape[1]))
    rep /= np.linalg.norm(rep, axis=1, keepdims=True)
    return scale * out @ rep.T


def _smooth_loss(logits: np.ndarray, targets: np.ndarray, eps=0.2) -> float:
    c = logits.shape[1]
    soft = np.full(logits.shape, eps / (c - 1))
    soft[np.arange(len(targets)), targets] = 1 - eps
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(soft * log_p).sum(axis=1).mean())


def test_adapter_forward_equals_the_reference_equations():
    feats, targets, text = _adapter_data()
    adapter = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=5)
    assert not adapter.training
    with torch.no_grad():
        got = adapter(feats).double().numpy()
    np.testing.assert_allclose(got, _reference_adapter(adapter, feats.double().numpy()), atol=1e-5)
    plain = InterViewAdapter(3, 8, dropout=0.0).train()
    with torch.no_grad():
        got = plain(feats).double().numpy()
    np.testing.assert_allclose(got, _reference_adapter(plain, feats.double().numpy(), train=True), atol=1e-5)


def test_adapter_initialisation_and_settings_follow_the_reference():
    adapter = InterViewAdapter(10, 16)
    assert torch.all(adapter.fusion_ratio == 0.5)
    assert (adapter.ratio, adapter.dropout) == (0.6, 0.075)
    assert adapter.global_linear.in_features == 160 and adapter.expand_views.out_features == 160
    assert (fewshot.TRAIN_EPOCHS, fewshot.TRAIN_LR, fewshot.TRAIN_BATCH) == (250, 0.01, 32)
    assert fewshot._epoch_lr(0, 250, 0.01) == 1e-5 and fewshot._epoch_lr(1, 250, 0.01) == pytest.approx(0.01)


def test_adapter_scores_with_uniform_weights_are_pointclip_logits():
    feats, targets, text = _adapter_data(seed=1)
    adapter = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=3)
    with torch.no_grad():
        got = 20.0 * adapter_scores(adapter, feats, text, torch.ones(3))
    np.testing.assert_allclose(got.numpy(), _reference_logits(adapter, feats, text, 20.0), atol=1e-4)


def test_smooth_cross_entropy_matches_the_hand_formula():
    rng = np.random.default_rng(2)
    logits, targets = rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6)
    got = smooth_cross_entropy(torch.tensor(logits), torch.tensor(targets))
    assert float(got) == pytest.approx(_smooth_loss(logits, targets), rel=1e-9)


def test_adapter_training_is_seeded_and_leaves_the_global_rng_alone():
    feats, targets, text = _adapter_data()
    state = torch.get_rng_state()
    first = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    second = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=8, seed=3)
    other = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=8, seed=4)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.global_linear.weight, other.global_linear.weight)


def test_adapter_training_lowers_the_loss():
    feats, targets, text = _adapter_data()
    before = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=0)
    after = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=40)
    loss_before = _smooth_loss(_reference_logits(before, feats, text, 20.0), targets.numpy())
    loss_after = _smooth_loss(_reference_logits(after, feats, text, 20.0), targets.numpy())
    assert loss_after < loss_before - 0.1


def test_adapter_needs_two_examples_and_two_labels():
    feats, targets, text = _adapter_data()
    with pytest.raises(InputError):
        train_adapter(feats[:1], targets[:1], text, torch.ones(3), 20.0, epochs=1)
    with pytest.raises(InputError):
        train_adapter(feats, torch.zeros(24, dtype=torch.int64), text[:1], torch.ones(3), 20.0, epochs=1)


# ---- files --------------------------------------------------------------------------------------------------
def _full_cache() -> FewShotCache:
    feats, targets, text = _adapter_data()
    adapter = train_adapter(feats, targets, text, torch.ones(3), 20.0, epochs=3)
    return build_cache(feats, targets, ["a", "b", "c", "d"], torch.tensor([1.0, 2.0, 1.0]), _metadata(),
                       alpha=1.25, beta=4.0, adapter=adapter)


def test_save_load_round_trip_is_exact(tmp_path):
    cache = _full_cache()
    path = tmp_path / "objects.fewshot"
    save_cache(path, cache)
    assert [p.name for p in tmp_path.iterdir()] == ["objects.fewshot"]  # no temporary file left behind
    loaded = load_cache(path)
    for name in ("view_keys", "keys", "targets"):
        assert torch.equal(getattr(loaded, name), getattr(cache, name)), name
    assert loaded.labels == cache.labels and (loaded.alpha, loaded.beta) == (1.25, 4.0)
    assert loaded.metadata == cache.metadata
    for name, value in cache.adapter.state_dict().items():
        assert torch.equal(loaded.adapter.state_dict()[name], value), name
    query = cache.keys[:5]
    assert torch.equal(cache_logits(query, loaded, ["d", "a"]), cache_logits(query, cache, ["d", "a"]))
    with torch.no_grad():
        assert torch.equal(loaded.adapter(cache.view_keys), cache.adapter(cache.view_keys))
    save_cache(path, loaded)  # overwriting an existing cache
    assert torch.equal(load_cache(path).keys, cache.keys)


def test_the_file_is_safetensors_with_json_metadata(tmp_path):
    from safetensors import safe_open

    cache = _full_cache()
    save_cache(tmp_path / "c.fewshot", cache)
    with safe_open(str(tmp_path / "c.fewshot"), "pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert {"view_keys", "keys", "targets", "adapter.fusion_ratio"} <= names
    assert json.loads(meta["labels"]) == ["a", "b", "c", "d"]
    assert json.loads(meta["meta.format_version"]) == fewshot.FORMAT_VERSION
    assert json.loads(meta["meta.falip"]) is True


@pytest.mark.parametrize("keep", [0, 5, 8, 60, -10])
def test_a_truncated_file_is_an_input_error(tmp_path, keep):
    save_cache(tmp_path / "c.fewshot", _full_cache())
    data = (tmp_path / "c.fewshot").read_bytes()
    (tmp_path / "c.fewshot").write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(InputError) as info:
        load_cache(tmp_path / "c.fewshot")
    assert "\n" not in str(info.value) and "c.fewshot" in str(info.value)


def test_foreign_files_are_input_errors(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "text.fewshot").write_text("not a cache at all\n" * 10)
    (tmp_path / "noise.fewshot").write_bytes(np.random.default_rng(0).bytes(4096))
    save_file({"x": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    for name in ("text.fewshot", "noise.fewshot", "plain.safetensors", "other.safetensors", "missing.fewshot"):
        with pytest.raises(InputError) as info:
            load_cache(tmp_path / name)
        assert "\n" not in str(info.value)


def test_a_cache_of_another_format_version_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fewshot, "FORMAT_VERSION", 99)
    save_cache(tmp_path / "new.fewshot", _full_cache())
    monkeypatch.undo()
    with pytest.raises(InputError, match="format version 99"):
        load_cache(tmp_path / "new.fewshot")


def test_saving_into_a_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        save_cache(tmp_path / "nope" / "c.fewshot", _small_cache()[0])


# ---- metadata -----------------------------------------------------------------------------------------------
@dataclass
class _Settings:
    projection: str = "realistic"
    view_weights: tuple = (1.0, 2.0)


def test_settings_hash_is_sha256_of_the_canonical_settings():
    import hashlib

    expected = hashlib.sha256(b'{"projection":"realistic","view_weights":[1.0,2.0]}').hexdigest()
    assert settings_hash(_Settings()) == settings_hash({"view_weights": [1.0, 2.0], "projection": "realistic"})
    assert settings_hash(_Settings()) == expected
    assert settings_hash(_Settings(view_weights=(1.0, 3.0))) != expected


def test_metadata_holds_every_field():
    meta = _metadata()
    assert set(meta) == set(fewshot.METADATA_KEYS)
    assert meta["format_version"] == fewshot.FORMAT_VERSION and meta["falip"] is True


@pytest.mark.parametrize("field,value", [("model", "ViT-B-32"), ("pretrained", "laion2b_s34b_b79k"),
                                         ("precision", "fp16"), ("falip", False)])
def test_a_metadata_mismatch_names_the_field(field, value):
    cache = _small_cache()[0]
    cache.metadata = _metadata()
    check_compatible(cache, _metadata())
    with pytest.raises(InputError, match=field):
        check_compatible(cache, _metadata(**{field: value}))


def test_a_changed_preset_and_the_first_difference_are_named():
    cache = _small_cache()[0]
    cache.metadata = _metadata()
    with pytest.raises(InputError, match="preset_hash"):
        check_compatible(cache, _metadata(settings={"projection": "simple"}))
    with pytest.raises(InputError, match="model") as info:
        check_compatible(cache, _metadata(model="RN50", falip=False))
    assert "falip" not in str(info.value)
    check_compatible(cache, {**_metadata(shots=16, points=2048)})  # shots and points do not matter


# ---- shot selection -----------------------------------------------------------------------------------------
def test_select_shots_is_deterministic_with_right_counts():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 7 + [5] * 4)
    np.random.default_rng(0).shuffle(labels)
    idx, counts = select_shots(labels, 4, seed=7)
    again, _ = select_shots(labels.tolist(), 4, seed=7)
    assert np.array_equal(idx, again) and idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)
    assert counts == {0: 4, 1: 2, 2: 4, 5: 4}
    taken = labels[idx]
    assert {c: int((taken == c).sum()) for c in counts} == counts
    assert np.all(np.isin(np.flatnonzero(labels == 1), idx))  # a small class gives everything it has
    others = {tuple(select_shots(labels, 4, seed=s)[0]) for s in range(5)}
    assert len(others) > 1


def test_select_shots_matches_the_documented_draw():
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1])
    rng = np.random.default_rng(3)
    expected = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), 2, replace=False) for c in (0, 1)]))
    assert np.array_equal(select_shots(torch.tensor(labels), 2, seed=3)[0], expected)


@pytest.mark.parametrize("shots", [0, -1, 1.5])
def test_select_shots_needs_a_positive_count(shots):
    with pytest.raises(InputError, match="shots"):
        select_shots([0, 1, 1], shots, seed=0)
