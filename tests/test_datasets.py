"""pointfalip.datasets: small datasets written by the tests in each release's layout read back exactly (labels in
the release's order, the points that were written), stream in order in batches, and every bad input raises an
InputError with one line naming the file or key."""
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import raises_one_line as _raises_one_line
import trimesh

from pointfalip import datasets
from pointfalip.datasets import list_datasets, open_dataset
from pointfalip.errors import InputError

# The releases' label orders, written out here independently of the package's data files.
MODELNET40 = ["airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup",
              "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop",
              "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa",
              "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox"]
MODELNET10 = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet"]
SCANOBJECTNN = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed", "pillow",
                "sink", "sofa", "toilet"]
H5_PREFIX = "data/modelnet40_ply_hdf5_2048/"
P = 2048  # points per cloud in the h5 releases


def _clouds(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, P, 3)).astype(np.float32)


def _write_h5(path: Path, data=None, label=None, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if data is not None:
            f.create_dataset("data", data=data)
        if label is not None:
            f.create_dataset("label", data=label)
        for key, value in extra.items():
            f.create_dataset(key, data=value)


def _write_modelnet40_h5(folder: Path, sizes=(3, 2), split="test", seed=0, listing=True, shape_names=True):
    """The modelnet40_ply_hdf5_2048 layout: ply_data_<split><k>.h5 with data (N,2048,3) float32 and label (N,1)
    uint8, <split>_files.txt whose lines carry the release's data/modelnet40_ply_hdf5_2048/ prefix, shape_names.txt.
    Returns all clouds and labels in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_data, all_labels, names = [], [], []
    for k, n in enumerate(sizes):
        data = _clouds(n, seed * 100 + k)
        label = rng.integers(0, 40, size=(n, 1)).astype(np.uint8)
        name = f"ply_data_{split}{k}.h5"
        _write_h5(folder / name, data, label, normal=np.zeros_like(data))
        all_data.append(data)
        all_labels.append(label[:, 0])
        names.append(name)
    if listing:
        (folder / f"{split}_files.txt").write_text("".join(f"{H5_PREFIX}{n}\n" for n in names))
    if shape_names:
        (folder / "shape_names.txt").write_text("\n".join(MODELNET40) + "\n")
    return np.concatenate(all_data), np.concatenate(all_labels).astype(np.int64)


def _write_box(path: Path, half: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=[2 * half] * 3).export(str(path), file_type="off")


def _on_box(points: np.ndarray, half: float) -> bool:
    """Every point of the surface of the box [-half, half]^3 has its largest |coordinate| equal to half."""
    return bool(np.allclose(np.abs(points).max(axis=1), half, atol=1e-5))


CORRUPT_OFF = "OFF\n4 2 0\n0 0 0\n1 0 0\nthis is not a vertex\n"


def _write_raw_tree(tree: Path):
    """A raw ModelNet40 tree: (class, file, half size) in label order, one corrupt .off in chair/test."""
    files = [("airplane", "airplane_0627.off", 0.5), ("airplane", "airplane_0628.off", 1.5),
             ("chair", "chair_0890.off", 2.0), ("chair", "chair_0891.off", None),  # corrupt
             ("chair", "chair_0892.off", 3.0), ("toilet", "toilet_0345.off", 0.25)]
    for cls, name, half in files:
        path = tree / cls / "test" / name
        if half is None:
            path.write_text(CORRUPT_OFF)
        else:
            _write_box(path, half)
    _write_box(tree / "airplane" / "train" / "airplane_0001.off", 7.0)
    (tree / ".DS_Store").write_text("")  # hidden files and folders are not classes
    return files


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------

def test_list_datasets():
    assert list_datasets() == ["modelnet40", "modelnet10", "scanobjectnn-obj_only", "scanobjectnn-obj_bg",
                               "scanobjectnn-pb_t50_rs", "folder", "shapenetpart", "scannet"]


def test_names_are_folded_and_scanobjectnn_means_pb_t50_rs():
    assert datasets.resolve_name("ScanObjectNN-PB-T50-RS") == "scanobjectnn-pb_t50_rs"
    assert datasets.resolve_name("scanobjectnn_obj_only") == "scanobjectnn-obj_only"
    assert datasets.resolve_name("scanobjectnn") == "scanobjectnn-pb_t50_rs"
    assert datasets.resolve_name("ModelNet40") == "modelnet40"


def test_register_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        datasets.register_dataset("modelnet40")(lambda root, split, n: None)


# --------------------------------------------------------------------------------------------------
# ModelNet40, h5 release
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_subfolder", [True, False])
def test_modelnet40_h5_reads_what_was_written(tmp_path, in_subfolder):
    folder = tmp_path / "modelnet40_ply_hdf5_2048" if in_subfolder else tmp_path
    data, labels = _write_modelnet40_h5(folder, sizes=(3, 2))
    ds = open_dataset("modelnet40", tmp_path)
    assert (ds.name, ds.split, ds.layout, ds.up_axis) == ("modelnet40", "test", "h5", "y")
    assert ds.classes == MODELNET40
    assert len(ds) == 5
    np.testing.assert_array_equal(ds.labels, labels)
    for i in range(5):
        points, label = ds[i]
        assert points.dtype == np.float32 and points.shape == (P, 3)
        np.testing.assert_array_equal(points, data[i])
        assert label == labels[i] and isinstance(label, int)
    np.testing.assert_array_equal(ds[-1][0], data[4])
    assert ds.source(3).endswith("ply_data_test1.h5[0]")  # row 0 of the second file listed
    with pytest.raises(IndexError):
        ds[5]


def test_modelnet40_h5_batches_cover_the_dataset_in_order(tmp_path):
    data, labels = _write_modelnet40_h5(tmp_path, sizes=(3, 2))
    ds = open_dataset("modelnet40", tmp_path)
    batches = list(ds.iter_batches(2))
    assert [b[0] for b in batches] == [[0, 1], [2, 3], [4]]  # the second batch spans both files
    clouds = np.concatenate([b[1] for b in batches])
    assert all(isinstance(b[1], np.ndarray) and b[1].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(clouds, data)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), labels)

    resumed = list(ds.iter_batches(4, start=3))
    assert [b[0] for b in resumed] == [[3, 4]]
    np.testing.assert_array_equal(resumed[0][1], data[3:])
    np.testing.assert_array_equal(resumed[0][2], labels[3:])
    assert list(ds.iter_batches(2, start=5)) == []
    assert ds.skipped == []


def test_modelnet40_h5_limit_and_num_points(tmp_path):
    data, labels = _write_modelnet40_h5(tmp_path, sizes=(3, 2))
    ds = open_dataset("modelnet40", tmp_path, limit=4, num_points=1024)
    assert len(ds) == 4
    np.testing.assert_array_equal(ds.labels, labels[:4])
    batches = list(ds.iter_batches(3))
    assert [b[0] for b in batches] == [[0, 1, 2], [3]]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), data[:4, :1024])  # first 1024 points
    with pytest.raises(IndexError):
        ds[4]
    assert len(open_dataset("modelnet40", tmp_path, limit=100)) == 5


def test_modelnet40_h5_train_split_and_files_without_a_list(tmp_path):
    _write_modelnet40_h5(tmp_path, sizes=(3, 2), split="test")
    # no train_files.txt: ply_data_train*.h5 in natural order (2 before 10)
    train2, train10 = _clouds(2, 7), _clouds(1, 8)
    _write_h5(tmp_path / "ply_data_train10.h5", train10, np.array([[5]], np.uint8))
    _write_h5(tmp_path / "ply_data_train2.h5", train2, np.array([[1], [2]], np.uint8))
    ds = open_dataset("modelnet40", tmp_path, split="train")
    assert ds.split == "train" and len(ds) == 3
    np.testing.assert_array_equal(ds.labels, [1, 2, 5])
    np.testing.assert_array_equal(ds[2][0], train10[0])


def test_modelnet40_h5_shape_names_are_read_and_checked(tmp_path, caplog):
    _write_modelnet40_h5(tmp_path, sizes=(2,))
    ds = open_dataset("modelnet40", tmp_path)
    assert ds.classes == MODELNET40
    renamed = ["plane"] + MODELNET40[1:]
    (tmp_path / "shape_names.txt").write_text("\n".join(renamed) + "\n")
    with caplog.at_level(logging.WARNING, logger="pointfalip.datasets"):
        ds = open_dataset("modelnet40", tmp_path)
    assert ds.classes == renamed  # the release's own file wins, with a warning
    assert "shape_names.txt" in caplog.text and "line 1" in caplog.text
    (tmp_path / "shape_names.txt").unlink()
    assert open_dataset("modelnet40", tmp_path).classes == MODELNET40  # absent: the packaged names


# --------------------------------------------------------------------------------------------------
# ScanObjectNN
# --------------------------------------------------------------------------------------------------

SCAN_FILES = {"scanobjectnn-obj_only": "main_split_nobg/test_objectdataset.h5",
              "scanobjectnn-obj_bg": "main_split/test_objectdataset.h5",
              "scanobjectnn-pb_t50_rs": "main_split/test_objectdataset_augmentedrot_scale75.h5"}


@pytest.mark.parametrize("parent", ["", "h5_files"])
def test_scanobjectnn_variants_read_their_own_file(tmp_path, parent):
    written = {}
    for k, (name, rel) in enumerate(SCAN_FILES.items()):
        n = 3 + k
        data = _clouds(n, 10 + k)
        label = np.arange(15 - n, 15, dtype=np.uint8)[::-1].copy()  # (N,), includes 14, the last class
        mask = np.zeros((n, P), np.int32) if k != 1 else None  # obj_bg's file has no mask: not needed
        extra = {} if mask is None else {"mask": mask}
        _write_h5(tmp_path / parent / rel, data, label, **extra)
        written[name] = (data, label)
    (tmp_path / parent / "main_split" / "training_objectdataset.h5").parent.mkdir(exist_ok=True)
    train = _clouds(2, 99)
    _write_h5(tmp_path / parent / "main_split" / "training_objectdataset.h5", train, np.array([0, 9], np.uint8))

    for name, (data, label) in written.items():
        ds = open_dataset(name, tmp_path)
        assert ds.classes == SCANOBJECTNN and ds.up_axis == "y"
        assert len(ds) == len(data)
        np.testing.assert_array_equal(ds.labels, label)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in ds.iter_batches(2)]), data)
    ds = open_dataset("scanobjectnn-obj_bg", tmp_path, split="train")
    np.testing.assert_array_equal(ds[1][0], train[1])
    assert ds[1][1] == 9 and ds.classes[9] == "table"


# --------------------------------------------------------------------------------------------------
# raw ModelNet trees
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["ModelNet40", ""])
def test_modelnet40_raw_tree(tmp_path, sub, caplog):
    tree = tmp_path / sub if sub else tmp_path
    files = _write_raw_tree(tree)
    ds = open_dataset("modelnet40", tmp_path)
    assert (ds.layout, ds.up_axis, ds.classes) == ("raw", "z", MODELNET40)
    assert len(ds) == 6
    np.testing.assert_array_equal(ds.labels, [MODELNET40.index(c) for c, _, _ in files])
    assert [Path(ds.source(i)).name for i in range(6)] == [f for _, f, _ in files]

    points, label = ds[2]
    assert points.shape == (P, 3) and points.dtype == np.float32 and label == 8
    assert _on_box(points, 2.0)
    np.testing.assert_array_equal(ds[2][0], points)  # reproducible: the same item gives the same sample
    with pytest.raises(InputError, match="chair_0891.off"):
        ds[3]

    with caplog.at_level(logging.WARNING, logger="pointfalip.datasets"):
        batches = list(ds.iter_batches(2))
    assert [b[0] for b in batches] == [[0, 1], [2], [4, 5]]  # item 3 is skipped
    for indices, clouds, labels in batches:
        assert isinstance(clouds, np.ndarray) and clouds.shape == (len(indices), P, 3)
        for i, cloud, lb in zip(indices, clouds, labels):
            _, _, half = files[i]
            assert _on_box(cloud, half), files[i]
            assert lb == MODELNET40.index(files[i][0])
    assert len(ds.skipped) == 1
    index, path, reason = ds.skipped[0]
    assert index == 3 and path.endswith("chair_0891.off") and reason
    assert "chair_0891.off" in caplog.text

    list(ds.iter_batches(4))
    assert len(ds.skipped) == 1  # recorded once
    resumed = list(ds.iter_batches(10, start=4))
    assert resumed[0][0] == [4, 5]
    np.testing.assert_array_equal(resumed[0][1][0], ds[4][0])  # seed follows the index, not the batch

    train = open_dataset("modelnet40", tmp_path, split="train")
    assert len(train) == 1 and _on_box(train[0][0], 7.0)


def test_modelnet40_raw_limit_warns_about_classes_left_out(tmp_path, caplog):
    _write_raw_tree(tmp_path / "ModelNet40")
    with caplog.at_level(logging.WARNING, logger="pointfalip.datasets"):
        ds = open_dataset("modelnet40", tmp_path, limit=3, num_points=256)
    assert len(ds) == 3 and [Path(ds.source(i)).name for i in range(3)] == [
        "airplane_0627.off", "airplane_0628.off", "chair_0890.off"]
    assert ds[0][0].shape == (256, 3)
    assert "cover only 2 of the 3 classes present" in caplog.text


def test_modelnet10_raw_tree(tmp_path):
    tree = tmp_path / "ModelNet10"
    _write_box(tree / "chair" / "test" / "chair_0890.off", 1.0)
    _write_box(tree / "toilet" / "test" / "toilet_0345.off", 2.0)
    _write_box(tree / "bathtub" / "test" / "bathtub_0107.off", 0.5)
    ds = open_dataset("modelnet10", tmp_path)
    assert ds.classes == MODELNET10 and ds.up_axis == "z"
    np.testing.assert_array_equal(ds.labels, [0, 2, 9])
    assert _on_box(ds[1][0], 1.0) and _on_box(ds[2][0], 2.0)


# --------------------------------------------------------------------------------------------------
# a user's folder
# --------------------------------------------------------------------------------------------------

def test_folder_dataset(tmp_path, caplog):
    rng = np.random.default_rng(3)
    mug = rng.normal(size=(500, 3)).astype(np.float32)
    mug_scan = rng.normal(size=(300, 3))
    (tmp_path / "mug" / "scans").mkdir(parents=True)
    np.save(tmp_path / "mug" / "a.npy", mug)
    np.savetxt(tmp_path / "mug" / "scans" / "b.xyz", mug_scan)
    _write_box(tmp_path / "box" / "crate.off", 0.75)
    (tmp_path / "box" / "notes.md").write_text("not a cloud")
    (tmp_path / "box" / ".hidden.npy").write_text("")
    (tmp_path / "empty class").mkdir()

    with caplog.at_level(logging.WARNING, logger="pointfalip.datasets"):
        ds = open_dataset("folder", tmp_path)
    assert ds.classes == ["box", "empty class", "mug"]  # sorted sub-folder names
    assert (ds.layout, ds.up_axis) == ("folder", "y")
    assert len(ds) == 3
    np.testing.assert_array_equal(ds.labels, [0, 2, 2])
    assert _on_box(ds[0][0], 0.75)
    np.testing.assert_array_equal(ds[1][0], mug)
    np.testing.assert_allclose(ds[2][0], mug_scan, rtol=1e-6)
    assert "empty class" in caplog.text and "ignored 1 file" in caplog.text

    batches = list(ds.iter_batches(3))
    assert len(batches) == 1 and batches[0][0] == [0, 1, 2]
    assert isinstance(batches[0][1], list)  # clouds of different sizes
    assert [c.shape for c in batches[0][1]] == [(P, 3), (500, 3), (300, 3)]

    small = open_dataset("folder", tmp_path, num_points=100, up_axis="Z")
    assert small.up_axis == "z"
    assert [small[i][0].shape for i in range(3)] == [(100, 3)] * 3  # point files subsampled to num_points


def test_folder_skips_an_unreadable_file(tmp_path):
    _write_box(tmp_path / "a" / "good.off", 1.0)
    (tmp_path / "a" / "bad.off").write_text(CORRUPT_OFF)
    ds = open_dataset("folder", tmp_path)
    batches = list(ds.iter_batches(8))
    assert [Path(ds.source(i)).name for i in batches[0][0]] == ["good.off"]
    assert [Path(p).name for _, p, _ in ds.skipped] == ["bad.off"]


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

def test_unknown_name_split_and_arguments(tmp_path):
    msg = _raises_one_line(open_dataset, "shapenet", tmp_path)
    assert "shapenet" in msg and "modelnet40" in msg
    _write_modelnet40_h5(tmp_path, sizes=(2,))
    assert "valid" in _raises_one_line(open_dataset, "modelnet40", tmp_path, split="valid")
    assert "limit" in _raises_one_line(open_dataset, "modelnet40", tmp_path, limit=0)
    assert "up axis" in _raises_one_line(open_dataset, "modelnet40", tmp_path, up_axis="w")
    ds = open_dataset("modelnet40", tmp_path)
    assert "batch_size" in _raises_one_line(lambda: list(ds.iter_batches(0)))
    assert "start" in _raises_one_line(lambda: list(ds.iter_batches(2, start=3)))
    assert "no splits" in _raises_one_line(open_dataset, "folder", tmp_path, split="train")


@pytest.mark.parametrize("name", list_datasets())
def test_missing_root(tmp_path, name):
    missing = tmp_path / "nowhere"
    assert str(missing) in _raises_one_line(open_dataset, name, missing, match="no such folder")
    (tmp_path / "file.txt").write_text("x")
    assert "not a folder" in _raises_one_line(open_dataset, name, tmp_path / "file.txt")


def test_no_release_under_root_says_which_layout_was_expected(tmp_path):
    (tmp_path / "something").mkdir()
    msg = _raises_one_line(open_dataset, "modelnet40", tmp_path)
    assert "ply_data_test*.h5" in msg and "test_files.txt" in msg and "<class>/test/*.off" in msg
    assert "ModelNet10/" in _raises_one_line(open_dataset, "modelnet10", tmp_path)
    msg = _raises_one_line(open_dataset, "scanobjectnn-obj_only", tmp_path)
    assert "main_split_nobg/test_objectdataset.h5" in msg
    _write_modelnet40_h5(tmp_path, sizes=(1,), split="test")
    assert "ply_data_train" in _raises_one_line(open_dataset, "modelnet40", tmp_path, split="train")


@pytest.mark.parametrize("key", ["data", "label"])
def test_missing_h5_key(tmp_path, key):
    data, label = _clouds(2, 0), np.zeros((2, 1), np.uint8)
    _write_h5(tmp_path / "ply_data_test0.h5", None if key == "data" else data, None if key == "label" else label)
    msg = _raises_one_line(open_dataset, "modelnet40", tmp_path)
    assert f"'{key}'" in msg and "ply_data_test0.h5" in msg
    rel = SCAN_FILES["scanobjectnn-obj_bg"]
    _write_h5(tmp_path / rel, None if key == "data" else data, None if key == "label" else label[:, 0])
    msg = _raises_one_line(open_dataset, "scanobjectnn-obj_bg", tmp_path)
    assert f"'{key}'" in msg and "test_objectdataset.h5" in msg


def test_listed_file_missing(tmp_path):
    _write_modelnet40_h5(tmp_path, sizes=(2, 2))
    (tmp_path / "ply_data_test1.h5").unlink()
    msg = _raises_one_line(open_dataset, "modelnet40", tmp_path)
    assert "test_files.txt line 2" in msg and "ply_data_test1.h5" in msg


def test_not_an_h5_file(tmp_path):
    (tmp_path / "ply_data_test0.h5").write_text("not hdf5")
    assert "ply_data_test0.h5" in _raises_one_line(open_dataset, "modelnet40", tmp_path, match="HDF5")


def test_label_outside_the_class_list(tmp_path):
    _write_h5(tmp_path / "ply_data_test0.h5", _clouds(3, 0), np.array([[0], [40], [3]], np.uint8))
    msg = _raises_one_line(open_dataset, "modelnet40", tmp_path)
    assert "ply_data_test0.h5" in msg and "'label'" in msg and "row 1 is 40" in msg
    _write_h5(tmp_path / SCAN_FILES["scanobjectnn-pb_t50_rs"], _clouds(2, 0), np.array([15, 0], np.uint8))
    assert "row 0 is 15" in _raises_one_line(open_dataset, "scanobjectnn-pb_t50_rs", tmp_path)
    # a raw tree's class folder that is not a class of the dataset
    _write_box(tmp_path / "raw" / "airplane" / "test" / "airplane_0627.off", 1.0)
    msg = _raises_one_line(open_dataset, "modelnet10", tmp_path / "raw")
    assert "airplane" in msg and "not a modelnet10 class" in msg


def test_wrong_shapes(tmp_path):
    _write_h5(tmp_path / "ply_data_test0.h5", _clouds(3, 0), np.zeros((2, 1), np.uint8))
    assert "'label' has shape (2, 1)" in _raises_one_line(open_dataset, "modelnet40", tmp_path)
    _write_h5(tmp_path / "ply_data_test0.h5", np.zeros((3, 2048), np.float32), np.zeros((3, 1), np.uint8))
    assert "'data' has shape (3, 2048)" in _raises_one_line(open_dataset, "modelnet40", tmp_path)


def test_empty_dataset(tmp_path):
    _write_h5(tmp_path / "h5" / "ply_data_test0.h5", np.zeros((0, P, 3), np.float32), np.zeros((0, 1), np.uint8))
    msg = _raises_one_line(open_dataset, "modelnet40", tmp_path / "h5")
    assert "empty" in msg and "ply_data_test0.h5" in msg
    (tmp_path / "raw" / "ModelNet40" / "chair" / "test").mkdir(parents=True)
    (tmp_path / "raw" / "ModelNet40" / "chair" / "train").mkdir(parents=True)
    _write_box(tmp_path / "raw" / "ModelNet40" / "chair" / "train" / "chair_0001.off", 1.0)
    msg = _raises_one_line(open_dataset, "modelnet40", tmp_path / "raw")
    assert "empty" in msg and "ModelNet40" in msg
    (tmp_path / "mine" / "cup").mkdir(parents=True)
    (tmp_path / "mine" / "cup" / "readme.md").write_text("")
    assert "empty" in _raises_one_line(open_dataset, "folder", tmp_path / "mine")
    (tmp_path / "nothing").mkdir()
    assert "no class folders" in _raises_one_line(open_dataset, "folder", tmp_path / "nothing")


def test_construction_reads_no_points(tmp_path, monkeypatch):
    """Opening reads file lists and labels only; points are read when asked for."""
    _write_raw_tree(tmp_path / "raw")
    (tmp_path / "raw" / "notes").mkdir()  # a folder without train/ or test/ is not a class folder
    _write_modelnet40_h5(tmp_path / "h5", sizes=(2,))
    calls = []
    monkeypatch.setattr(datasets.pio, "load_points", lambda *a, **k: calls.append(a) or np.zeros((8, 3)))
    assert len(open_dataset("modelnet40", tmp_path / "raw")) == 6
    assert calls == []
    read = []
    original = datasets.H5Dataset._rows
    monkeypatch.setattr(datasets.H5Dataset, "_rows", lambda self, *a: read.append(a) or original(self, *a))
    ds = open_dataset("modelnet40", tmp_path / "h5")
    assert read == []
    ds[1]
    assert len(read) == 1
