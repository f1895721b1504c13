"""Few-shot recognition on generated objects: accuracy against zero-shot, and what it costs (not a test).

    python bench/bench_fewshot.py [--model ViT-B-32] [--precision bf16] [--test 10] [--repeats 5]

Six classes built from trimesh primitives (box, cylinder, sphere, cone, capsule, torus), each object with its own
random proportions and rotation, 1,024 points sampled on its surface. Random weights: zero-shot accuracy is at
chance, and what few-shot gains shows that the cache and the adapter carry the examples' information through the
pipeline. Accuracy with real CLIP weights needs the weights (see the README).
Cost: the cache term's share of per-object time (features computed once, `Recognizer.logits` timed with and
without the cache), adapter training time, and peak memory of building a 40-class cache at 4 and 16 shots.
"""
import argparse
import resource
import time
import warnings

import numpy as np
import torch
import trimesh

from common import cpu_name

from pointfalip import Recognizer, fewshot, load_model

CLASSES = ("box", "cylinder", "sphere", "cone", "capsule", "torus")
POINTS = 1024
# Random-weight view features are nearly collinear (cosine >= 0.998 between any two objects), so Tip-Adapter's
# default beta cannot tell them apart; a sharp affinity shows the information is there all the same.
SHARP = (10.0, 2000.0)


def make_object(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A primitive with random proportions and a random rotation, sampled on its surface."""
    a, b, c = rng.uniform(0.4, 1.6, 3)
    mesh = {"box": lambda: trimesh.creation.box((a, b, c)),
            "cylinder": lambda: trimesh.creation.cylinder(radius=0.3 * a, height=1.5 * b),
            "sphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=0.6 * a),
            "cone": lambda: trimesh.creation.cone(radius=0.4 * a, height=1.2 * b),
            "capsule": lambda: trimesh.creation.capsule(radius=0.25 * a, height=1.2 * b),
            "torus": lambda: trimesh.creation.torus(major_radius=0.6 * a, minor_radius=0.15 * b)}[kind]()
    if kind == "sphere":
        mesh.apply_scale((1.0, b, c))
    mesh.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
    points, _ = trimesh.sample.sample_surface(mesh, POINTS, seed=int(rng.integers(2**31)))
    return points.astype(np.float32)


def dataset(per_class: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    clouds, targets = [], []
    for t, kind in enumerate(CLASSES):
        for _ in range(per_class):
            clouds.append(make_object(kind, rng))
            targets.append(t)
    return clouds, targets


def embed(rec: Recognizer, clouds: list) -> torch.Tensor:
    return torch.cat([rec.embed(clouds[i:i + 16]) for i in range(0, len(clouds), 16)])


def accuracy(rec: Recognizer, feats: torch.Tensor, targets: list) -> float:
    return float((rec.logits(feats).argmax(-1) == torch.tensor(targets)).float().mean())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--test", type=int, default=10, help="test objects per class")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=250, help="adapter epochs (PointCLIP's 250)")
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model, pretrained="none", precision=args.precision)
    rec = Recognizer(model, labels=list(CLASSES), cache_dir=False)
    train, train_t = dataset(16, seed=1)
    test, test_t = dataset(args.test, seed=2)
    t0 = time.perf_counter()
    train_feats, test_feats = embed(rec, train), embed(rec, test)
    per_object = (time.perf_counter() - t0) / (len(train) + len(test))
    rows = [("zero-shot", "-", accuracy(rec, test_feats, test_t))]
    train_t = np.asarray(train_t)
    timings = {}
    for shots in (1, 4, 16):
        idx = np.concatenate([np.flatnonzero(train_t == c)[:shots] for c in range(len(CLASSES))])
        cache = fewshot.cache_from_features(rec, train_feats[idx], train_t[idx].tolist(), shots, POINTS)
        rows.append(("cache", shots, accuracy(Recognizer(model, labels=list(CLASSES), cache_dir=False,
                                                         fewshot=cache), test_feats, test_t)))
        tuned = fewshot.cache_from_features(rec, train_feats[idx], train_t[idx].tolist(), shots, POINTS,
                                            tune_cache=True)
        rows.append(("cache, tuned α β", shots, accuracy(Recognizer(model, labels=list(CLASSES), cache_dir=False,
                                                                    fewshot=tuned), test_feats, test_t)))
        sharp = fewshot.cache_from_features(rec, train_feats[idx], train_t[idx].tolist(), shots, POINTS)
        sharp.alpha, sharp.beta = SHARP
        rows.append((f"cache, sharp (α={SHARP[0]:g}, β={SHARP[1]:g})", shots, accuracy(
            Recognizer(model, labels=list(CLASSES), cache_dir=False, fewshot=sharp), test_feats, test_t)))
        t1 = time.perf_counter()
        adapted = fewshot.cache_from_features(rec, train_feats[idx], train_t[idx].tolist(), shots, POINTS,
                                              adapter=True, adapter_epochs=args.epochs)
        timings[shots] = time.perf_counter() - t1
        rows.append(("cache + adapter", shots, accuracy(Recognizer(model, labels=list(CLASSES), cache_dir=False,
                                                                   fewshot=adapted), test_feats, test_t)))
    with_cache = Recognizer(model, labels=list(CLASSES), cache_dir=False, fewshot=cache)

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) / len(test)

    plain_t, cache_t = best(lambda: rec.logits(test_feats)), best(lambda: with_cache.logits(test_feats))
    cpu = cpu_name()
    print(f"pointfalip few-shot bench — {args.model} {args.precision}, random weights, {len(CLASSES)} classes, "
          f"{args.test} test objects a class, {cpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| method | shots | accuracy |")
    print("|---|---|---|")
    for name, shots, acc in rows:
        print(f"| {name} | {shots} | {acc:.1%} |")
    q = torch.nn.functional.normalize(test_feats.mean(1), dim=-1)
    print(f"chance: {1 / len(CLASSES):.1%}; cosine between test objects' features: min {float((q @ q.T).min()):.4f}")
    print()
    print("| cost | value |")
    print("|---|---|")
    print(f"| per-object time, projection + encoder (s) | {per_object:.3f} |")
    print(f"| cache term, 16 shots x 6 classes, per object (ms) | {1e3 * (cache_t - plain_t):.3f} |")
    print(f"| cache term / per-object time | {(cache_t - plain_t) / per_object:.3%} |")
    for shots, t in timings.items():
        print(f"| adapter training, {shots} shots x 6 classes, {args.epochs} epochs (s) | {t:.1f} |")
    rss = {}
    labels = [f"class{i}" for i in range(40)]
    big = Recognizer(model, labels=labels, cache_dir=False)
    rng = np.random.default_rng(3)
    for shots in (4, 16):
        feats, targets = [], []
        for start in range(0, 40 * shots, 16):  # streamed as build_from_dataset streams: 16 clouds at a time
            batch = [make_object(CLASSES[rng.integers(6)], rng) for _ in range(min(16, 40 * shots - start))]
            feats.append(big.embed(batch))
            targets += [(start + k) // shots for k in range(len(batch))]
        fewshot.cache_from_features(big, torch.cat(feats), targets, shots, POINTS)
        rss[shots] = peak_rss_mb()
    print(f"| peak RSS after a 40 x 4 cache (MB) | {rss[4]:.0f} |")
    print(f"| peak RSS after a 40 x 16 cache (MB) | {rss[16]:.0f} (+{rss[16] - rss[4]:.0f}) |")


if __name__ == "__main__":
    main()
