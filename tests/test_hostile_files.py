"""Hostile files: a corpus the test writes (truncated, mislabelled, mis-encoded, with a BOM, with header counts
that lie, tiny, empty, folders, pipes, unreadable, 16-bit / palette / LA / RGBA images, decompression bombs),
each read in-process by `io.load_points` or `images.load_image` / `load_mask`.

Every case ends in a one-line InputError naming what is wrong, or in the right answer computed here; nothing is
printed (not even by open3d's C++ code), no warning escapes, the file keeps its bytes and mode, and no file
appears in the folder. Hostile arguments (boxes, top-k, region dicts) close the file.
"""
from __future__ import annotations

import hashlib
import io as _io
import os
import pickle
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import load_random, raises_one_line
from pointfalip import foveal, images, regions, visual_prompts
from pointfalip.io import POINT_EXTENSIONS, SUPPORTED_EXTENSIONS, load_points
from pointfalip.images import load_image, load_mask

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROWS = np.random.default_rng(7).normal(size=(100, 3)) * [1.0, 2.0, 3.0] + [4.0, -5.0, 6.0]
MASK_SIZE = (30, 20)  # (width, height) of every mask case


class Error(NamedTuple):
    """An InputError whose one line holds all these words (case-insensitive)."""
    words: tuple[str, ...]


class Case(NamedTuple):
    name: str  # the file's name in the corpus folder
    reader: str  # "points", "image" or "mask"
    write: Callable[[Path], None]  # writes the file (or folder, pipe, link) at the path
    expect: Any  # an Error, or a check of the result: fn(result, path)
    root_skips: bool = False  # only meaningful when not root (chmod 000 is readable by root)


def err(*words: str) -> Error:
    return Error(tuple(w.lower() for w in words))


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _text(text: str, encoding: str = "utf-8") -> Callable[[Path], None]:
    return lambda p: p.write_bytes(text.encode(encoding))


def _rows_text(rows: np.ndarray) -> str:
    return "".join(" ".join(repr(float(v)) for v in r) + "\n" for r in rows)


def _same_points(expected: np.ndarray) -> Callable[[np.ndarray, Path], None]:
    def check(out: np.ndarray, path: Path) -> None:
        np.testing.assert_array_equal(out, expected.astype(np.float32))
    return check


# ---- point files ----------------------------------------------------------------------------------------
def _pcd(points: int, data: str = "ascii", fields: str = "x y z", width: int | None = None, kind: str = "F 4") -> bytes:
    n = len(fields.split())
    type_, size = kind.split()
    return (f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS {fields}\nSIZE {' '.join([size] * n)}\n"
            f"TYPE {' '.join([type_] * n)}\nCOUNT {' '.join(['1'] * n)}\nWIDTH {points if width is None else width}\n"
            f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n").encode()


def _ply(data: str, counts: dict[str, int]) -> bytes:
    head = f"ply\nformat {data} 1.0\n"
    for element, n in counts.items():
        head += f"element {element} {n}\n"
        head += ("property float x\nproperty float y\nproperty float z\n" if element == "vertex"
                 else "property list uchar int vertex_indices\n")
    return (head + "end_header\n").encode()


def _npy(arr: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy_header_only(shape: tuple[int, ...], body: bytes) -> bytes:
    """A .npy header (magic included) claiming a float64 array of this shape, then the given bytes."""
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def _npz_member(name: str, data: bytes) -> bytes:
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def _folder(p: Path) -> None:
    p.mkdir()


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _self_link(p: Path) -> None:
    os.symlink(p.name, p)


def _dangling(p: Path) -> None:
    os.symlink("nowhere-at-all.xyz", p)


def _unreadable(writer: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        writer(p)
        p.chmod(0)
    return write


BOX_STL = trimesh.creation.box().export(file_type="stl")
BOX_GLB = trimesh.creation.box().export(file_type="glb")
BOX_OFF = trimesh.creation.box().export(file_type="off").encode()
BINARY_ROWS = ROWS.astype("<f4").tobytes()
GOOD = {  # one valid file of each point format, for the unreadable cases
    ".ply": _ply("ascii", {"vertex": 100}) + _rows_text(ROWS).encode(), ".pcd": _pcd(100) + _rows_text(ROWS).encode(),
    ".xyz": _rows_text(ROWS).encode(), ".txt": _rows_text(ROWS).encode(), ".pts": _rows_text(ROWS).encode(),
    ".npy": _npy(ROWS), ".npz": _npz(points=ROWS), ".off": BOX_OFF, ".stl": BOX_STL, ".glb": BOX_GLB,
    ".obj": trimesh.creation.box().export(file_type="obj").encode(),
}
assert set(GOOD) == set(SUPPORTED_EXTENSIONS)

POINT_CASES = [
    # headers whose counts lie (never invent points, never pass uninitialised memory on)
    Case("pcd_ascii_5000_over_100.pcd", "points", _bytes(_pcd(5000) + _rows_text(ROWS).encode()), err("5000", "100")),
    Case("pcd_binary_5000_over_100.pcd", "points", _bytes(_pcd(5000, "binary") + BINARY_ROWS), err("5000")),
    Case("pcd_ascii_header_only.pcd", "points", _bytes(_pcd(5000)), err("5000", "0 data rows")),
    Case("pcd_binary_header_only.pcd", "points", _bytes(_pcd(5000, "binary")), err("5000", "0 bytes")),
    Case("pcd_compressed_header_only.pcd", "points", _bytes(_pcd(100, "binary_compressed")), err("100 points")),
    Case("pcd_compressed_sizes_lie.pcd", "points",
         _bytes(_pcd(100, "binary_compressed") + struct.pack("<II", 40, 1200) + b"\x00" * 10), err("compressed")),
    Case("pcd_huge_points.pcd", "points", _bytes(_pcd(10**12, "binary") + BINARY_ROWS), err("1000000000000")),
    Case("pcd_points_not_width.pcd", "points", _bytes(_pcd(100, width=50) + _rows_text(ROWS).encode()),
         err("POINTS 100", "50")),
    Case("pcd_ascii_words.pcd", "points", _bytes(_pcd(3) + b"1 2 3\na b c\n4 5 6\n"), err("unreadable")),
    Case("pcd_ascii_short_row.pcd", "points", _bytes(_pcd(3) + b"1 2 3\n4 5\n6 7 8\n"), err("row 2", "2 values")),
    Case("pcd_unknown_type.pcd", "points", _bytes(_pcd(100, kind="X 4") + _rows_text(ROWS).encode()), err("TYPE 'X'")),
    Case("pcd_half_floats.pcd", "points", _bytes(_pcd(100, "binary", kind="F 2") + ROWS.astype("<f2").tobytes()),
         err("SIZE 2")),
    Case("pcd_garbage_lzf.pcd", "points", _bytes(_pcd(100, "binary_compressed") + struct.pack("<II", 200, 1200)
                                                 + np.random.default_rng(1).bytes(200)), err("open3d read 0")),
    Case("pcd_no_xyz.pcd", "points", _bytes(_pcd(100, fields="a b c") + _rows_text(ROWS).encode()), err("x y z")),
    Case("pcd_no_data_line.pcd", "points", _text("VERSION 0.7\nFIELDS x y z\n"), err("DATA")),
    Case("pcd_is_npy.pcd", "points", _bytes(_npy(ROWS)), err(".npy")),
    Case("ply_ascii_5000_over_100.ply", "points", _bytes(_ply("ascii", {"vertex": 5000}) + _rows_text(ROWS).encode()),
         err("5000", "100 data rows")),
    Case("ply_ascii_100_over_200.ply", "points",
         _bytes(_ply("ascii", {"vertex": 100}) + _rows_text(np.vstack([ROWS, ROWS])).encode()), err("200")),
    Case("ply_binary_5000_over_100.ply", "points",
         _bytes(_ply("binary_little_endian", {"vertex": 5000}) + BINARY_ROWS), err("5000", "1200 bytes")),
    Case("ply_binary_header_only.ply", "points", _bytes(_ply("binary_little_endian", {"vertex": 5000})), err("5000")),
    Case("ply_binary_huge_faces.ply", "points",
         _bytes(_ply("binary_little_endian", {"vertex": 100, "face": 10**11}) + BINARY_ROWS), err("100000000000")),
    Case("ply_ascii_faces_missing.ply", "points",
         _bytes(_ply("ascii", {"vertex": 100, "face": 50}) + _rows_text(ROWS).encode()), err("50", "100 data rows")),
    Case("ply_ascii_row_too_long.ply", "points",
         _bytes(_ply("ascii", {"vertex": 3}) + b"1 2 3\n4 5 6 7\n8 9 10\n"), err("row 2", "4 values")),
    Case("ply_no_xyz.ply", "points", _bytes(_ply("ascii", {"vertex": 100}).replace(b"float x", b"float a")
                                            + _rows_text(ROWS).encode()), err("x y z")),
    Case("ply_no_end_header.ply", "points", _text("ply\nformat ascii 1.0\nelement vertex 3\n"), err("end_header")),
    Case("off_5000_over_100.off", "points", _text("OFF\n5000 0 0\n" + _rows_text(ROWS)), err("5000", "100")),
    Case("off_faces_missing.off", "points", _text("OFF\n100 300 0\n" + _rows_text(ROWS) + "3 0 1 2\n"), err("300")),
    Case("off_no_counts.off", "points", _text("OFF\nhello world\n"), err("counts")),
    Case("stl_truncated.stl", "points", _bytes(BOX_STL[:300]), err("12 triangles", "300 bytes")),
    Case("stl_count_lies.stl", "points", _bytes(BOX_STL[:80] + struct.pack("<I", 10**6) + BOX_STL[84:]),
         err("1000000 triangles")),
    Case("glb_truncated.glb", "points", _bytes(BOX_GLB[: len(BOX_GLB) // 2]), err(str(len(BOX_GLB)))),
    Case("pts_count_5000_over_100.pts", "points", _text("5000\n" + _rows_text(ROWS)), err("count line", "5000")),
    Case("pts_count_huge.pts", "points", _text("100000000000\n" + _rows_text(ROWS)), err("100000000000")),
    Case("npy_huge_shape.npy", "points", _bytes(_npy_header_only((10**11, 3), BINARY_ROWS)), err("100000000000")),
    Case("npy_truncated.npy", "points", _bytes(_npy(ROWS)[:500]), err("(100, 3)")),
    Case("npy_trailing_rows.npy", "points", _bytes(_npy(ROWS) + ROWS.tobytes()), err("(100, 3)", "4800")),
    Case("npz_huge_member_shape.npz", "points",
         _bytes(_npz_member("points.npy", _npy_header_only((10**11, 3), b"\x00" * 24))), err("100000000000")),
    Case("npz_truncated.npz", "points", _bytes(_npz(points=ROWS)[:1000]), err(".npz")),
    Case("npz_without_arrays.npz", "points", _bytes(_npz_member("readme.txt", b"hello")), err("no .npy")),
    # content that is not what the extension says
    Case("archive_named.npy", "points", _bytes(_npz(points=ROWS)), err("ZIP", ".npz")),
    Case("array_named.npz", "points", _bytes(_npy(ROWS)), err(".npy")),
    Case("pickle_named.npy", "points", _bytes(pickle.dumps(ROWS)), err("pickle")),
    Case("objects.npy", "points", _bytes(_npy(np.array([{"a": 1}], dtype=object))), err("Python objects")),
    Case("objects_in.npz", "points", _bytes(_npz(points=np.array([{"a": 1}], dtype=object))), err("Python objects")),
    Case("text_named.ply", "points", _text("hello world\n1 2 3\n"), err("text file", ".ply")),
    Case("png_named.ply", "points", _bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), err("PNG image")),
    Case("ply_named.off", "points", _bytes(_ply("ascii", {"vertex": 100}) + _rows_text(ROWS).encode()), err("PLY")),
    Case("off_named.xyz", "points", _bytes(BOX_OFF), err("OFF mesh", ".off")),
    Case("pcd_named.txt", "points", _bytes(_pcd(100) + _rows_text(ROWS).encode()), err("PCD", ".pcd")),
    Case("npy_named.xyz", "points", _bytes(_npy(ROWS)), err(".npy")),
    Case("npy_named.obj", "points", _bytes(_npy(ROWS)), err(".npy")),
    Case("random_bytes.obj", "points", _bytes(bytes(range(256)) * 4), err("binary data", ".obj")),
    Case("text_named.glb", "points", _text("just some text\n"), err("text file", ".glb")),
    Case("glb_length_lies.glb", "points", _bytes(BOX_GLB[:8] + struct.pack("<I", 10**9) + BOX_GLB[12:]),
         err("1000000000 bytes")),
    Case("random_bytes.xyz", "points", _bytes(bytes(range(256)) * 4), err("binary data")),
    Case("gzip_named.pts", "points", _bytes(b"\x1f\x8b\x08" + b"\x00" * 20), err("gzip")),
    # encodings
    Case("bom.xyz", "points", _text("\ufeff" + _rows_text(ROWS)), _same_points(ROWS)),
    Case("bom_header.txt", "points", _text("\ufeffx,y,z\n" + _rows_text(ROWS).replace(" ", ",")), _same_points(ROWS)),
    Case("bom_count.pts", "points", _text("\ufeff100\n" + _rows_text(ROWS)), _same_points(ROWS)),
    Case("crlf.xyz", "points", _text(_rows_text(ROWS).replace("\n", "\r\n")), _same_points(ROWS)),
    Case("latin1.xyz", "points", _bytes("# café\n".encode("latin-1") + _rows_text(ROWS).encode()), err("UTF-8")),
    Case("latin1_late.xyz", "points", _bytes(_rows_text(ROWS).encode() * 50 + "# é\n".encode("latin-1")),
         err("UTF-8")),
    Case("utf16.xyz", "points", _text(_rows_text(ROWS), "utf-16"), err("UTF-16")),
    # values
    Case("overflow_f32.xyz", "points", _text(_rows_text(ROWS * 1e300)), err("float32")),
    Case("overflow_f32.npy", "points", _bytes(_npy(ROWS * 1e300)), err("float32")),
    # sizes, kinds of paths
    Case("empty.pcd", "points", _bytes(b""), err("empty")),
    Case("empty.npz", "points", _bytes(b""), err("empty")),
    Case("one_byte.ply", "points", _bytes(b"p"), err(".ply")),
    Case("tiny.npy", "points", _bytes(b"\x93NU"), err("not a valid .npy")),
    Case("tiny.stl", "points", _bytes(b"solid"), err("STL")),
    Case("tiny.glb", "points", _bytes(b"glTF"), err(".glb")),
    Case("tiny.pcd", "points", _bytes(b"#"), err("PCD")),
    Case("one_point.xyz", "points", _text("1 2 3\n"), err("only 1 distinct")),
    Case("folder.ply", "points", _folder, err("is a folder")),
    Case("folder.npy", "points", _folder, err("is a folder")),
    Case("pipe.xyz", "points", _fifo, err("not a regular file")),
    Case("loop.xyz", "points", _self_link, err("not a usable path")),
    Case("dangling.xyz", "points", _dangling, err("no such file")),
    Case("new\nline.xyz", "points", _text("1 2\n"), err("new\\nline")),
] + [Case(f"unreadable{ext}", "points", _unreadable(_bytes(GOOD[ext])), err("permission denied"), root_skips=True)
     for ext in SUPPORTED_EXTENSIONS]


# ---- images ---------------------------------------------------------------------------------------------
RNG = np.random.default_rng(3)
GREY16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
PALETTE = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
INDEX = RNG.integers(0, 4, (20, 30), dtype=np.uint8)
LA = RNG.integers(0, 256, (20, 30, 2), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)
CMYK = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)
MASK_RGBA = np.zeros((20, 30, 4), np.uint8)
MASK_RGBA[5:10, 4:12] = (255, 255, 255, 255)  # the region
MASK_RGBA[0:3, 0:3] = (200, 10, 10, 0)  # coloured but transparent: outside
MASK_RGBA[15:18, 20:25] = (0, 0, 0, 255)  # opaque black: outside
MASK16 = np.zeros((20, 30), np.uint16)
MASK16[2:6, 3:9] = 1  # 1 of 65535: still the region


def _save(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG", **kwargs) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        im = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes()) if mode else Image.fromarray(arr)
        if mode == "P":
            im.putpalette(PALETTE.reshape(-1).tolist())
        im.save(p, fmt, **kwargs)
    return write


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height grey pixels."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _rotated_jpeg(p: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; viewers rotate 90 degrees clockwise
    Image.fromarray(RGBA[..., :3]).save(p, "JPEG", exif=exif, quality=95)


def _composite(colour: np.ndarray, alpha: np.ndarray, background: float) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return colour.astype(np.float64) * a + background * (1.0 - a)


def _pixels(expected: np.ndarray, atol: int = 0) -> Callable[[Image.Image, Path], None]:
    def check(out: Image.Image, path: Path) -> None:
        assert out.mode == "RGB" and out.size == (expected.shape[1], expected.shape[0])
        np.testing.assert_allclose(np.asarray(out).astype(np.int64), expected, atol=atol)
    return check


def _mask(expected: np.ndarray) -> Callable[[np.ndarray, Path], None]:
    def check(out: np.ndarray, path: Path) -> None:
        assert out.dtype == bool
        np.testing.assert_array_equal(out, expected)
    return check


def _upright(out: Image.Image, path: Path) -> None:
    with Image.open(path) as raw:
        expected = np.asarray(raw.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert out.size == (20, 30)  # 30x20 stored, shown turned
    np.testing.assert_array_equal(np.asarray(out), expected)


def _rgb3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


IMAGE_CASES = [
    Case("grey16.png", "image", _save(GREY16), _pixels(_rgb3(np.round(GREY16 / 257.0)))),
    Case("palette_transparent.png", "image", _save(INDEX, "P", transparency=0),
         _pixels(np.where((INDEX == 0)[..., None], 255, PALETTE[INDEX]))),
    Case("palette.gif", "image", _save(INDEX, "P", "GIF"), _pixels(PALETTE[INDEX])),
    Case("la.png", "image", _save(LA, "LA"), _pixels(_rgb3(_composite(LA[..., :1], LA[..., 1], 255.0)[..., 0]), 1)),
    Case("rgba.png", "image", _save(RGBA, "RGBA"), _pixels(_composite(RGBA[..., :3], RGBA[..., 3], 255.0), 1)),
    Case("cmyk.tiff", "image", _save(CMYK, "CMYK", "TIFF"),
         _pixels((255.0 - CMYK[..., :3]) * (255.0 - CMYK[..., 3:]) / 255.0, 1)),
    Case("exif_rotated.jpg", "image", _rotated_jpeg, _upright),
    Case("float.tiff", "image", _save(RNG.random((20, 30)).astype(np.float32), "F", "TIFF"), err("floating-point")),
    Case("bomb.png", "image", _bytes(_png_claiming(100_000, 100_000)), err("decompression")),
    Case("bomb_warning_range.png", "image", _bytes(_png_claiming(10_000, 10_000)), err("decompression")),
    Case("truncated.png", "image", lambda p: (_save(RGBA, "RGBA")(p), p.write_bytes(p.read_bytes()[:120])),
         err("not an image file")),
    Case("header_only.png", "image", _bytes(b"\x89PNG\r\n\x1a\n"), err("not an image file")),
    Case("text.png", "image", _text("not a picture\n"), err("not an image file")),
    Case("npy_named.png", "image", _bytes(_npy(ROWS)), err("not an image file")),
    Case("empty.png", "image", _bytes(b""), err("empty")),
    Case("folder.png", "image", _folder, err("is a folder")),
    Case("pipe.png", "image", _fifo, err("not a regular file")),
    Case("missing.png", "image", lambda p: None, err("does not exist")),
    Case("unreadable.png", "image", _unreadable(_save(RGBA, "RGBA")), err("permission denied"), root_skips=True),
    Case("mask_rgba.png", "mask", _save(MASK_RGBA, "RGBA"),
         _mask((MASK_RGBA[..., 3] > 0) & (MASK_RGBA[..., :3].max(-1) > 0))),
    Case("mask16.png", "mask", _save(MASK16), _mask(MASK16 != 0)),
    Case("mask_la.png", "mask", _save(np.stack([(MASK16 * 9).astype(np.uint8), np.full((20, 30), 255, np.uint8)], -1),
                                      "LA"), _mask(MASK16 != 0)),
    Case("mask_palette.png", "mask", _save(INDEX, "P", transparency=0),
         _mask((INDEX != 0) & (PALETTE[INDEX].max(-1) > 0))),
    Case("mask_wrong_size.png", "mask", _save(np.ones((21, 30), np.uint8)), err("30x21", "same size")),
    Case("mask_black.png", "mask", _save(np.zeros((20, 30, 4), np.uint8), "RGBA"), err("empty")),
    Case("mask_bomb.png", "mask", _bytes(_png_claiming(100_000, 100_000)), err("decompression")),
]
CASES = POINT_CASES + IMAGE_CASES
assert len({c.name for c in CASES}) == len(CASES)
READERS = {"points": load_points, "image": load_image, "mask": lambda p: load_mask(p, MASK_SIZE)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for case in CASES:
        case.write(folder / case.name)
    yield folder
    for case in CASES:  # let pytest clean up the unreadable files
        path = folder / case.name
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)


def _state(path: Path) -> tuple:
    """What must not change: kind, mode, size and bytes (read only from readable regular files)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return ("absent",)
    data = None
    if stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
        data = hashlib.sha256(path.read_bytes()).hexdigest()
    return stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_size, data


def test_the_corpus_covers_every_format():
    names = [c.name for c in POINT_CASES]
    for ext in POINT_EXTENSIONS + (".off", ".stl", ".glb"):
        assert sum(n.endswith(ext) for n in names) >= 3, ext
    assert len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[c.name.replace("\n", "\\n") for c in CASES])
def test_hostile_file(corpus, case, capfd):
    if case.root_skips and ROOT:
        pytest.skip("root reads files whatever their mode")
    path = corpus / case.name
    before, listing = _state(path), sorted(os.listdir(corpus))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(case.expect, Error):
            msg = raises_one_line(READERS[case.reader], path)
            said = msg.replace(str(path), "").lower()  # the words must be in what is said, not in the file's name
            for word in case.expect.words:
                assert word in said, msg
            assert "allow_pickle" not in msg and "Traceback" not in msg
        else:
            case.expect(READERS[case.reader](path), path)
    out, errors = capfd.readouterr()
    assert out == "" and errors == "", (out, errors)  # nothing from open3d's C++ log or anyone else
    assert [str(w.message) for w in caught] == []
    assert _state(path) == before
    assert sorted(os.listdir(corpus)) == listing


def test_unreadable_files_say_permission_denied_even_for_root(corpus, monkeypatch):
    """What the reading code does on EACCES, simulated for root (who can read mode-000 files)."""
    from pointfalip import io as pio

    real_open = open

    def denied(file, *args, **kwargs):
        if str(file).startswith(str(corpus)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(pio, "open", denied, raising=False)
    for ext in SUPPORTED_EXTENSIONS:
        path = corpus / f"readable{ext}"
        path.write_bytes(GOOD[ext])
        raises_one_line(load_points, path, match="permission denied")
        path.unlink()
    monkeypatch.setattr(images.os, "access", lambda *a, **k: False)
    path = corpus / "readable.png"
    _save(RGBA, "RGBA")(path)
    raises_one_line(load_image, path, match="permission denied")
    path.unlink()


def test_good_files_of_every_format_still_load(corpus):
    for ext, data in GOOD.items():
        path = corpus / f"good{ext}"
        path.write_bytes(data)
        out = load_points(path, num_points=64)
        assert out.dtype == np.float32 and out.shape[1] == 3 and len(out) >= 8
        path.unlink()


# ---- hostile arguments: boxes, regions, top-k ---------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return load_random("pf-tiny-16")


@pytest.fixture
def picture() -> Image.Image:
    return Image.fromarray(RGBA[..., :3])  # 30x20


def test_one_box_rule_everywhere(picture):
    assert foveal.parse_box(" 1, 2,3 ,4") == (1.0, 2.0, 3.0, 4.0)
    assert foveal.check_box(np.array([1, 2, 3, 4]), 30, 20) == (1.0, 2.0, 3.0, 4.0)
    assert foveal.check_box(torch.tensor([1.5, 2, 3, 4]), 30, 20) == (1.5, 2.0, 3.0, 4.0)
    for bad in ("1,2,3", "1,2,3,4,5", "a,b,c,d", "", "1,2,nan,4", "1,2,inf,4", "1e400,2,3,4", "1,2\n,x,4"):
        raises_one_line(foveal.parse_box, bad, match="box")
    for bad in ([1, 2, 3], [1, 2, None, 4], [True, 2, 3, 4], ["1", "2", "3", "4"], 5, None, {"x0": 1}):
        raises_one_line(foveal.check_box, bad, 30, 20, match="four numbers")
    for bad in ([10**400, 0, 1, 1], [1, 2, float("nan"), 4], np.array([0, 0, np.inf, 1])):
        raises_one_line(foveal.check_box, bad, 30, 20, match="four finite numbers")
    raises_one_line(foveal.check_box, (5, 5, 5, 9), 30, 20, match="empty")
    for outside in ((-1, 0, 5, 5), (0, 0, 31, 5), (0, 0, 5, 21)):
        msg = raises_one_line(foveal.check_box, outside, 30, 20, match="outside")
        # the pixel prompts follow the same rule with the same words
        for prompt in ("circle", "blur", "crop"):
            assert raises_one_line(visual_prompts.apply, prompt, picture, outside) == msg


def test_pixel_prompts_check_masks(picture):
    raises_one_line(visual_prompts.apply, "blur", picture, None, np.ones((5, 5), bool), match="shape")
    raises_one_line(visual_prompts.apply, "crop", picture, None, np.zeros((20, 30), bool), match="empty")
    raises_one_line(visual_prompts.apply, "blur", picture, (0, 0, 5, 5), np.ones((20, 30), bool), match="not both")


def test_region_batch_leaves_the_callers_dicts_alone(model, picture):
    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 4:20] = 1
    box = [2, 3, 17, 15]  # a list of ints: the old code replaced it with a tuple of floats in the dict
    given = [{"box": box}, {"mask": mask, "box": None}]
    for prompt in ("falip", "crop", "blur"):
        regions.region_batch(model, picture, given, prompt)
        assert given[0] == {"box": [2, 3, 17, 15]} and given[0]["box"] is box
        assert set(given[1]) == {"mask", "box"} and given[1]["mask"] is mask and given[1]["box"] is None
        assert mask.dtype == np.uint8 and mask.sum() == 6 * 16


def test_region_batch_refuses_bad_regions(model, picture):
    raises_one_line(regions.region_batch, model, picture, [{"box": (0, 0, 40, 5)}], match="outside")
    raises_one_line(regions.region_batch, model, picture, [{"mask": np.ones((5, 5), bool)}], match="shape")
    raises_one_line(regions.region_batch, model, picture, [{"mask": np.zeros((20, 30), bool)}], match="empty")
    raises_one_line(regions.region_batch, model, picture, [{}], match="box or a mask")
    raises_one_line(regions.region_batch, model, picture, [{"box": (0, 0, 5, 5), "mask": np.ones((20, 30))}],
                    match="not both")


@pytest.mark.parametrize("top_k", [0, -1, -10**9, 1.5, True, "3"])
def test_top_k_is_the_3d_rule(model, picture, top_k):
    from pointfalip.recognize import Recognizer

    cloud = np.random.default_rng(0).normal(size=(64, 3))
    msg_3d = raises_one_line(Recognizer(model, labels=["cat", "dog"]).classify, cloud, top_k=top_k)
    msg = raises_one_line(regions.classify_region, model, picture, ["cat", "dog"], top_k=top_k)
    assert msg == msg_3d  # Recognizer.classify's rule and message, word for word
    assert raises_one_line(regions.rank_boxes, model, picture, [(0, 0, 5, 5)], "a cat", top_k=top_k) == msg
    if not isinstance(top_k, (float, bool, str)):
        assert msg.startswith("top-k must be at least 1")


def test_top_k_keeps_that_many(model, picture):
    preds = regions.classify_region(model, picture, ["cat", "dog", "car"], box=(0, 0, 10, 10), top_k=2)
    assert len(preds) == 2 and preds[0].probability >= preds[1].probability
    ranked = regions.rank_boxes(model, picture, [[0, 0, 10, 10], (5, 5, 25, 15)], "a cat", top_k=1)
    assert len(ranked) == 1 and ranked[0].label in {"0,0,10,10", "5,5,25,15"}

