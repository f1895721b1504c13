"""The embedded default: a few objects built from trimesh primitives, no downloaded data.

Each object is a known ModelNet40 class put together from boxes, cylinders and cones, y-up, so the demo
shows the whole pipeline on shapes whose answer a person can check at a glance.
"""
from __future__ import annotations

import numpy as np
import trimesh

DEMO_POINTS = 2048
DEMO_SEED = 0


def _box(extents, center) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(center))


def _upright(mesh: trimesh.Trimesh, center) -> trimesh.Trimesh:
    """A z-axis primitive turned y-up and moved to `center`."""
    mesh = mesh.copy()
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    mesh.apply_translation(center)
    return mesh


def _legs(width, depth, height, radius=0.03):
    return [_upright(trimesh.creation.cylinder(radius=radius, height=height), (x, height / 2, z))
            for x in (-width / 2, width / 2) for z in (-depth / 2, depth / 2)]


def table() -> trimesh.Trimesh:
    return trimesh.util.concatenate([_box((1.6, 0.06, 0.9), (0, 0.75, 0)), *_legs(1.45, 0.75, 0.72)])


def chair() -> trimesh.Trimesh:
    seat = _box((0.5, 0.05, 0.5), (0, 0.45, 0))
    back = _box((0.5, 0.5, 0.05), (0, 0.72, -0.225))
    return trimesh.util.concatenate([seat, back, *_legs(0.44, 0.44, 0.43, radius=0.02)])


def lamp() -> trimesh.Trimesh:
    base = _upright(trimesh.creation.cylinder(radius=0.15, height=0.04), (0, 0.02, 0))
    pole = _upright(trimesh.creation.cylinder(radius=0.015, height=1.2), (0, 0.62, 0))
    shade = _upright(trimesh.creation.cone(radius=0.25, height=0.3), (0, 1.15, 0))
    return trimesh.util.concatenate([base, pole, shade])


def bottle() -> trimesh.Trimesh:
    body = _upright(trimesh.creation.cylinder(radius=0.1, height=0.45), (0, 0.225, 0))
    shoulder = _upright(trimesh.creation.cone(radius=0.1, height=0.12), (0, 0.45, 0))
    neck = _upright(trimesh.creation.cylinder(radius=0.03, height=0.12), (0, 0.57, 0))
    return trimesh.util.concatenate([body, shoulder, neck])


def cone() -> trimesh.Trimesh:
    return _upright(trimesh.creation.cone(radius=0.4, height=0.9), (0, 0, 0))


OBJECTS = {"table": table, "chair": chair, "lamp": lamp, "bottle": bottle, "cone": cone}


def demo_clouds(num_points: int = DEMO_POINTS, seed: int = DEMO_SEED) -> dict[str, np.ndarray]:
    """Name -> (num_points, 3) float32 surface samples of each demo object (y-up), seeded."""
    clouds = {}
    for i, (name, build) in enumerate(OBJECTS.items()):
        points, _ = trimesh.sample.sample_surface(build(), num_points, seed=seed + i)
        clouds[name] = np.asarray(points, dtype=np.float32)
    return clouds
