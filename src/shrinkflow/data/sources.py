"""Data sources: the built-in digits, IDX (MNIST-style), image folders and CIFAR batches.

Every source is read into the same form: uint8 images ``(N, C, H, W)``, int64 labels ``(N,)`` and
class names. A source comes in *parts* (its own ``train`` and ``test`` files, or one ``all``
pool); ``prepare`` either keeps the source's own test split and carves validation out of its
train part (``prepare.split: source``), or pools every part and splits it itself
(``prepare.split: pooled``), stratified and seeded either way.

Memory: images are never held as a whole. Each part knows its labels up front (label files are
small) and streams its images in chunks, which are scattered straight into memory-mapped
``.npy`` files (``{train,val,test}_x.npy`` + ``_y.npy``). Training and evaluation open those
files memory-mapped and gather one batch at a time, so peak RSS stays near the prepared data's
size. (The old ``.npz`` path held several copies: 1.3 GB peak RSS for 55 MB of MNIST.)

Sources never download: a missing path is an error that says what was expected there, and a
damaged file is an error that names it.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.images import read_image

CHUNK_BYTES = 8 * 2**20  # images are streamed in chunks of about this size
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclass
class SourcePart:
    """One file set of a source (``train``, ``test`` or ``all``), in its stored order.

    ``labels`` are known up front; ``chunks()`` streams the images as uint8 ``(n, C, H, W)``
    arrays, in the same order, without ever holding the whole part.
    """

    name: str
    labels: np.ndarray
    chunks: Callable[[], Iterator[np.ndarray]]


@dataclass
class Source:
    parts: list[SourcePart]
    classes: list[str]
    shape: tuple[int, int, int]
    sha256: str  # of the source bytes, so meta.json says exactly what was read
    files: list[str] = field(default_factory=list)
    resize: str = "squash"  # image folders: the resize policy (data.images), kept in meta.json

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([p.labels for p in self.parts])

    def part(self, name: str) -> SourcePart | None:
        return next((p for p in self.parts if p.name == name), None)

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image and label in memory, parts in order: for small data and tests only."""
        images = [chunk for part in self.parts for chunk in part.chunks()]
        return np.concatenate(images), self.labels


# --- sources -------------------------------------------------------------------------------


def _sha256_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            while block := fh.read(2**20):
                digest.update(block)
    return digest.hexdigest()


def chunk_rows(shape: tuple[int, ...]) -> int:
    return max(1, CHUNK_BYTES // int(np.prod(shape)))


def _in_memory_part(name: str, images: np.ndarray, labels: np.ndarray) -> SourcePart:
    rows = chunk_rows(images.shape[1:])
    chunks = lambda: (images[i : i + rows] for i in range(0, len(images), rows))  # noqa: E731
    return SourcePart(name, labels, chunks)


def source_from_arrays(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> Source:
    """A pooled source from in-memory uint8 images (N, C, H, W): built-in and test data."""
    sha = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return Source([_in_memory_part("all", images, labels.astype(np.int64))], classes,
                  tuple(images.shape[1:]), sha)


def load_digits_source() -> Source:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 0..16 ink), offline.

    It has no test split of its own: only ``prepare.split: pooled`` applies.
    """
    # scikit-learn is imported here and in _split_off, the two places `prepare` needs it, not at
    # the top: every stage imports this module (load_prepared), and sklearn took `import
    # shrinkflow.data` from 2.6 s to 4.5 s, in each of the pipeline's stage processes.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None]
    return source_from_arrays(images, bunch.target.astype(np.int64),
                              [str(c) for c in bunch.target_names])


# IDX (MNIST format) ------------------------------------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_idx(path: Path):
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _idx_header(fh, path: Path) -> tuple[Any, list[int]]:
    head = fh.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise ShrinkflowError(f"{path}: not an IDX file (bad magic number)")
    if head[2] not in IDX_DTYPES:
        raise ShrinkflowError(f"{path}: unsupported IDX element type 0x{head[2]:02x}")
    raw_dims = fh.read(4 * head[3])
    if len(raw_dims) < 4 * head[3]:
        raise ShrinkflowError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(head[3])]
    return np.dtype(IDX_DTYPES[head[2]]), dims


def _damaged(path: Path, exc: Exception) -> ShrinkflowError:
    return ShrinkflowError(f"{path}: damaged or truncated file ({type(exc).__name__}: {exc})")


def read_idx(path: Path) -> np.ndarray:
    """Read one whole IDX file (MNIST format, gzipped or not): for labels and small files."""
    try:
        with _open_idx(path) as fh:
            dtype, dims = _idx_header(fh, path)
            body = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, exc) from None
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise ShrinkflowError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the file holds "
            f"{len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _idx_image_chunks(path: Path) -> Iterator[np.ndarray]:
    """Stream a uint8 ``(N, H, W)`` IDX image file as ``(n, 1, H, W)`` chunks."""
    try:
        with _open_idx(path) as fh:
            dtype, dims = _idx_header(fh, path)
            if dtype != np.uint8 or len(dims) != 3:
                raise ShrinkflowError(
                    f"{path}: expected uint8 images of N x H x W, got type {dtype} shape {dims}"
                )
            n, h, w = dims
            rows = chunk_rows((h, w))
            for start in range(0, n, rows):
                count = min(rows, n - start)
                buf = fh.read(count * h * w)
                if len(buf) != count * h * w:
                    raise ShrinkflowError(
                        f"{path}: truncated: the header says {n} images, the data ends after "
                        f"{start + len(buf) // (h * w)}"
                    )
                yield np.frombuffer(buf, dtype=np.uint8).reshape(count, 1, h, w)
            if fh.read(1):
                raise ShrinkflowError(f"{path}: more data than the header's {n} images")
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, exc) from None


def _idx_part(name: str, image_file: Path, label_file: Path) -> tuple[SourcePart, tuple]:
    labels = read_idx(label_file)
    if labels.ndim != 1:
        raise ShrinkflowError(f"{label_file}: expected a 1-D label file, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShrinkflowError(f"{label_file}: labels must be integers, the file holds "
                              f"{labels.dtype} values")
    try:
        with _open_idx(image_file) as fh:
            _, dims = _idx_header(fh, image_file)
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(image_file, exc) from None
    if len(dims) != 3 or dims[0] != len(labels):
        raise ShrinkflowError(
            f"{image_file}: expected N images of H x W matching the {len(labels)} labels of "
            f"{label_file.name}, got shape {dims}"
        )
    part = SourcePart(name, labels.astype(np.int64), lambda: _idx_image_chunks(image_file))
    return part, (1, dims[1], dims[2])


def load_idx_source(root: Path) -> Source:
    """``*images-idx3-ubyte[.gz]`` files under ``root`` with their ``*labels-idx1`` partners.

    Pairs are matched by prefix. ``t10k-`` (or ``test-``) files are the source's test split,
    every other pair is training data, so MNIST, Fashion-MNIST and KMNIST work the same way.
    """
    image_files = sorted(root.glob("*images-idx3-ubyte*"))
    if not image_files:
        raise ShrinkflowError(
            f"prepare.path = {str(root)!r}: no '*images-idx3-ubyte[.gz]' file found "
            "(expected MNIST-format IDX files, e.g. train-images-idx3-ubyte.gz)"
        )
    parts, shapes, used, labelled = [], set(), [], []
    for img_file in image_files:
        prefix = img_file.name.split("images-idx3-ubyte")[0]
        partners = sorted(root.glob(f"{prefix}labels-idx1-ubyte*"))
        if not partners:
            raise ShrinkflowError(f"{img_file}: no matching '{prefix}labels-idx1-ubyte' file")
        name = "test" if prefix.rstrip("-_").lower() in ("t10k", "test") else "train"
        part, shape = _idx_part(name, img_file, partners[0])
        labelled.append((partners[0], part.labels))
        parts.append(part)
        shapes.add(shape)
        used += [img_file, partners[0]]
    if len(shapes) > 1:
        raise ShrinkflowError(f"prepare.path = {str(root)!r}: IDX files of different image "
                              f"sizes {sorted(shapes)}")
    parts.sort(key=lambda p: p.name != "train")  # train first, then test
    n_classes = check_labels(labelled)
    return Source(parts, [str(c) for c in range(n_classes)], shapes.pop(), _sha256_files(used),
                  [str(f) for f in used])


# Image folders -----------------------------------------------------------------------------


def _list_images(root: Path, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray,
                                                                          list[str]]:
    """``class_name/*.png|jpg...`` files, sorted, with labels (the torchvision ImageFolder order).

    Listed by hand because ``import torchvision`` costs ~2.5 s per process here.
    """
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ShrinkflowError(f"{root}: class folder(s) {unknown} are not in train/'s classes")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                        and p.is_file()) if folder.is_dir() else []
        files += images
        labels += [label] * len(images)
    return files, np.asarray(labels, dtype=np.int64), classes


def _image_chunks(files: list[Path], size: int, channels: int,
                  resize: str) -> Iterator[np.ndarray]:
    rows = chunk_rows((channels, size, size))
    for start in range(0, len(files), rows):
        yield np.stack([read_image(f, channels, size, size, resize)
                        for f in files[start : start + rows]])


def _image_part(name: str, files: list[Path], labels: np.ndarray, size: int,
                channels: int, resize: str) -> SourcePart:
    return SourcePart(name, labels, lambda: _image_chunks(files, size, channels, resize))


def _refuse_empty_classes(root: Path, labels: np.ndarray, classes: list[str]) -> None:
    """A class folder without images would become a class the model can never learn (and a
    name on its card): refused, naming the folder, rather than skipped silently."""
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty and len(empty) < len(classes):
        raise ShrinkflowError(f"{root / empty[0]}: class folder holds no images"
                              + (f" (nor do {empty[1:4]})" if len(empty) > 1 else "")
                              + f"; add images or remove the folder (expected "
                              f"{', '.join(IMAGE_SUFFIXES[:3])}... files)")


def _refuse_half_of_a_split_folder(root: Path) -> None:
    """``prepare.path`` at ``photos/train`` when ``photos/`` has train/ and test/: the folder
    would be read as one pool and its test/ half never used; the fix is the parent folder."""
    parent = root.parent
    halves = [n for n in ("train", "test", "val") if (parent / n).is_dir()]
    if root.name in ("train", "test", "val") and "train" in halves and len(halves) > 1:
        raise ShrinkflowError(
            f"prepare.path = {str(root)!r} is the {root.name}/ half of a folder with "
            f"{' and '.join(h + '/' for h in halves)}: set prepare.path: {str(parent)!r} "
            f"(its {[h for h in halves if h != 'train'][0]}/ becomes the test split)")


def load_imagefolder_source(root: Path, image_size: int, channels: int,
                            resize: str = "squash") -> Source:
    """An image folder as ``image_size`` squares, ``channels`` 1 (grey) or 3 (RGB), read by the
    one image policy (``data.images``: modes, bombs, ``resize`` squash / crop / letterbox).

    Either ``class_name/*.png|jpg`` (one pool), or ``train/class_name/...`` plus ``test/`` (or
    ``val/``) laid out the same way: the source's own test split.
    """
    _refuse_half_of_a_split_folder(root)
    holdout = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    parts: list[SourcePart] = []
    used: list[Path] = []
    if (root / "train").is_dir():
        files, labels, classes = _list_images(root / "train")
        _refuse_empty_classes(root / "train", labels, classes)
        parts.append(_image_part("train", files, labels, image_size, channels, resize))
        used += files
        if holdout is not None:
            test_files, test_labels, _ = _list_images(holdout, classes)
            parts.append(_image_part("test", test_files, test_labels, image_size, channels,
                                     resize))
            used += test_files
    elif holdout is not None:
        raise ShrinkflowError(f"prepare.path = {str(root)!r}: has {holdout.name}/ but no train/ "
                              "folder (expected train/<class>/... beside it)")
    else:
        files, labels, classes = _list_images(root)
        _refuse_empty_classes(root, labels, classes)
        parts.append(_image_part("all", files, labels, image_size, channels, resize))
        used += files
    if not used:
        raise ShrinkflowError(
            f"prepare.path = {str(root)!r}: no images found; expected one sub-folder per class "
            f"holding {', '.join(IMAGE_SUFFIXES[:3])}... files (optionally under train/ and test/)"
        )
    return Source(parts, classes, (channels, image_size, image_size), _sha256_files(used),
                  resize=resize)


# CIFAR (torchvision's python format) -------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python format is pickled dicts of numpy arrays: allow numpy, refuse the rest."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")


def _read_cifar_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise ShrinkflowError(f"{path}: not a CIFAR python-format batch ({exc})") from None


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (uint8 images N x 3 x 32 x 32, int64 labels), structure checked."""
    batch = _read_cifar_pickle(path)
    expected = f"a dict with b'data' (N x 3072 uint8) and {label_key!r} (N labels)"
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ShrinkflowError(f"{path}: expected {expected}")
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ShrinkflowError(f"{path}: expected {expected} ({exc})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data) or labels.ndim != 1:
        raise ShrinkflowError(f"{path}: expected {expected}, got data {data.shape} and "
                              f"{labels.shape} labels")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


CIFAR_LAYOUTS = {  # folder: (train batches, test batches, label key, meta file, names key)
    "cifar-10-batches-py": (
        [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
        b"labels", "batches.meta", b"label_names",
    ),
    "cifar-100-python": (["train"], ["test"], b"fine_labels", "meta", b"fine_label_names"),
}


def _find_cifar(root: Path) -> tuple[Path, tuple]:
    """Accept the torchvision root (holding the CIFAR folder) or the CIFAR folder itself."""
    for folder, layout in CIFAR_LAYOUTS.items():
        base = root / folder if (root / folder).is_dir() else root
        if all((base / b).is_file() for b in layout[0] + layout[1]):
            return base, layout
    raise ShrinkflowError(
        f"prepare.path = {str(root)!r}: no CIFAR data found; expected torchvision's layout "
        "'cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}' or "
        "'cifar-100-python/{train,test,meta}' (shrinkflow never downloads)"
    )


def _cifar_part(name: str, labelled: list[tuple[Path, np.ndarray]],
                label_key: bytes) -> SourcePart:
    # Labels sit in the same pickle as the images: each batch was read once for its labels and
    # is read again while streaming, so at most one batch (30 MB for CIFAR-10) is in memory.
    labels = np.concatenate([labels for _, labels in labelled])
    chunks = lambda: (_read_cifar_batch(f, label_key)[0] for f, _ in labelled)  # noqa: E731
    return SourcePart(name, labels, chunks)


def load_cifar_source(root: Path) -> Source:
    """CIFAR-10 or CIFAR-100 in torchvision's on-disk python format (never downloaded).

    With the meta file, its class names are the classes and every label must index them;
    without it, labels must count from 0 without gaps (``check_labels``)."""
    base, (train, test, label_key, meta_name, names_key) = _find_cifar(root)
    labelled = {f: _read_cifar_batch(base / f, label_key)[1] for f in train + test}
    meta_path = base / meta_name
    classes = None
    if meta_path.is_file():
        meta = _read_cifar_pickle(meta_path)
        names = meta.get(names_key) if isinstance(meta, dict) else None
        if not isinstance(names, list) or not names:
            raise ShrinkflowError(f"{meta_path}: expected a dict with {names_key!r}, a list of "
                                  "class names")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    n_classes = check_labels([(base / f, labels) for f, labels in labelled.items()],
                             None if classes is None else len(classes),
                             None if classes is None else meta_path)
    classes = classes or [str(c) for c in range(n_classes)]
    parts = [_cifar_part(name, [(base / f, labelled[f]) for f in names], label_key)
             for name, names in (("train", train), ("test", test))]
    files = [base / b for b in train + test]
    return Source(parts, classes, (3, 32, 32), _sha256_files(files))


# --- labels ----------------------------------------------------------------------------------


def check_labels(labelled: list[tuple[Path, np.ndarray]], num_classes: int | None = None,
                 names_from: Path | None = None) -> int:
    """The class count, once every label of every file is in ``0 .. count-1``; else one line
    naming the file, the first bad label and its position in that file.

    ``num_classes`` comes from the source's class names when it has them (CIFAR's meta file,
    ``names_from``). Otherwise (IDX) the count is what the labels imply: they must count from 0
    without a gap, since a class with no image would be a class the model predicts but never
    saw (one stray label of 200 among 0..9 made a 201-class model; a negative one crashed).
    """
    if num_classes is None:
        present = np.unique(np.concatenate([labels for _, labels in labelled]))
        gaps = np.flatnonzero(present[present >= 0] != np.arange((present >= 0).sum()))
        num_classes = int(gaps[0]) if gaps.size else int((present >= 0).sum())
        why = f"the labels count 0..{num_classes - 1} without a gap"
    else:
        why = f"{names_from} names {num_classes} classes"
    for path, labels in labelled:
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            i = int(bad[0])
            if not num_classes:
                raise ShrinkflowError(f"{path}: label {int(labels[i])} at position {i}: no image "
                                      "has label 0, and labels must count from 0")
            raise ShrinkflowError(f"{path}: label {int(labels[i])} at position {i} is outside "
                                  f"the class range 0..{num_classes - 1} ({why}; {bad.size} "
                                  "label(s) of this file are outside)")
    return num_classes


# --- choosing a source ---------------------------------------------------------------------


def check_source(source: str, path: str) -> Path | None:
    """Fail early, before any output is touched, when a path-based source has no usable path."""
    if source == "digits":
        return None
    if not path:
        raise ShrinkflowError(f"prepare.path is empty but prepare.source = {source!r} needs one")
    p = Path(path)
    if not p.is_dir():
        raise ShrinkflowError(f"prepare.path = {path!r}: no such directory (source {source!r})")
    return p


def load_source(source: str, path: str, image_size: int, channels: int,
                resize: str = "squash") -> Source:
    """Open the configured source: labels and shapes are read and checked, images not yet."""
    root = check_source(source, path)
    if source == "digits":
        src = load_digits_source()
    elif source == "idx":
        src = load_idx_source(root)
    elif source == "imagefolder":
        src = load_imagefolder_source(root, image_size, channels, resize)
    elif source == "cifar":
        src = load_cifar_source(root)
    else:
        raise ShrinkflowError(f"prepare.source = {source!r}: expected digits, idx, imagefolder, "
                              "cifar")
    present = np.unique(src.labels)
    if len(present) < 2:
        names = [src.classes[i] for i in present]
        raise ShrinkflowError(f"prepare.path = {path!r}: found {len(present)} class {names}; "
                              "a classifier needs at least 2")
    return src




