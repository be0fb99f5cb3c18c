"""Data sources, the deterministic split, and reading the prepared dataset back.

Every source is read into the same form: uint8 images ``(N, C, H, W)``, int64 labels ``(N,)`` and
class names. ``prepare`` then splits train/val/test (stratified, seeded), computes the
normalisation mean/std on train only, and writes ``{train,val,test}.npz`` + ``meta.json``.

Sources never download: a missing path is an error that says what was expected there.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shrinkflow.errors import ShrinkflowError


@dataclass
class RawDataset:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    sha256: str  # of the source bytes, so meta.json says exactly what was read


@dataclass
class Prepared:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    meta: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]


# --- sources -------------------------------------------------------------------------------


def _sha256_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def load_digits_source() -> RawDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 0..16 ink), offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    sha = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return RawDataset(images, labels, [str(c) for c in bunch.target_names], sha)


def _open_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (MNIST format, gzipped or not) into a numpy array."""
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ShrinkflowError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ShrinkflowError(f"{path}: unsupported IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ShrinkflowError(f"{path}: IDX header says shape {dims} but holds {body.size} values")
    return body.reshape(dims)


def load_idx_source(root: Path) -> RawDataset:
    """All ``*images-idx3-ubyte[.gz]`` files under ``root`` with their ``*labels-idx1`` partners.

    Pairs are matched by prefix (``train-``, ``t10k-``) and pooled; shrinkflow makes its own
    split, so Fashion-MNIST or KMNIST files work the same way.
    """
    image_files = sorted(root.glob("*images-idx3-ubyte*"))
    if not image_files:
        raise ShrinkflowError(
            f"prepare.path = {str(root)!r}: no '*images-idx3-ubyte[.gz]' file found "
            "(expected MNIST-format IDX files, e.g. train-images-idx3-ubyte.gz)"
        )
    images, labels, used = [], [], []
    for img_file in image_files:
        prefix = img_file.name.split("images-idx3-ubyte")[0]
        partners = sorted(root.glob(f"{prefix}labels-idx1-ubyte*"))
        if not partners:
            raise ShrinkflowError(f"{img_file}: no matching '{prefix}labels-idx1-ubyte' file")
        x, y = read_idx(img_file), read_idx(partners[0])
        if x.ndim != 3 or len(x) != len(y):
            raise ShrinkflowError(
                f"{img_file}: expected N images of HxW matching {len(y)} labels, got {x.shape}"
            )
        images.append(x.astype(np.uint8)[:, None])
        labels.append(y.astype(np.int64))
        used += [img_file, partners[0]]
    y_all = np.concatenate(labels)
    classes = [str(c) for c in range(int(y_all.max()) + 1)]
    return RawDataset(np.concatenate(images), y_all, classes, _sha256_files(used))


def load_imagefolder_source(root: Path, image_size: int, channels: int) -> RawDataset:
    """An ImageFolder tree (``class_name/*.png|jpg``) resized to ``image_size`` squares."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    mode = "L" if channels == 1 else "RGB"
    transform = transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert(mode)),
            transforms.Resize((image_size, image_size), antialias=True),
            transforms.PILToTensor(),
        ]
    )
    try:
        folder = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ShrinkflowError(
            f"prepare.path = {str(root)!r}: not a usable ImageFolder tree ({exc}); expected "
            "one sub-folder per class holding .png/.jpg images"
        ) from exc
    images = np.stack([folder[i][0].numpy() for i in range(len(folder))]).astype(np.uint8)
    labels = np.asarray(folder.targets, dtype=np.int64)
    files = [Path(p) for p, _ in folder.samples]
    return RawDataset(images, labels, list(folder.classes), _sha256_files(files))


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


def _read_cifar_batch(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as fh:
            return _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise ShrinkflowError(f"{path}: not a CIFAR python-format batch ({exc})") from exc


CIFAR_LAYOUTS = {  # folder: (batch files, label key, meta file, class-names key)
    "cifar-10-batches-py": (
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        b"labels", "batches.meta", b"label_names",
    ),
    "cifar-100-python": (["train", "test"], b"fine_labels", "meta", b"fine_label_names"),
}


def _find_cifar(root: Path) -> tuple[Path, tuple]:
    """Accept the torchvision root (holding the CIFAR folder) or the CIFAR folder itself."""
    for folder, layout in CIFAR_LAYOUTS.items():
        base = root / folder if (root / folder).is_dir() else root
        if all((base / b).is_file() for b in layout[0]):
            return base, layout
    raise ShrinkflowError(
        f"prepare.path = {str(root)!r}: no CIFAR data found; expected torchvision's layout "
        "'cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}' or "
        "'cifar-100-python/{train,test,meta}' (shrinkflow never downloads)"
    )


def load_cifar_source(root: Path) -> RawDataset:
    """CIFAR-10 or CIFAR-100 in torchvision's on-disk python format (never downloaded)."""
    base, (batches, label_key, meta_name, names_key) = _find_cifar(root)
    images, labels = [], []
    for name in batches:
        batch = _read_cifar_batch(base / name)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    y = np.concatenate(labels)
    meta_path = base / meta_name
    if meta_path.is_file():
        classes = [c.decode() for c in _read_cifar_batch(meta_path)[names_key]]
    else:
        classes = [str(c) for c in range(int(y.max()) + 1)]
    files = [base / b for b in batches]
    return RawDataset(np.concatenate(images), y, classes, _sha256_files(files))


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


def load_source(source: str, path: str, image_size: int, channels: int) -> RawDataset:
    root = check_source(source, path)
    if source == "digits":
        return load_digits_source()
    assert root is not None
    if source == "idx":
        return load_idx_source(root)
    if source == "imagefolder":
        return load_imagefolder_source(root, image_size, channels)
    if source == "cifar":
        return load_cifar_source(root)
    raise ShrinkflowError(f"prepare.source = {source!r}: expected digits, idx, imagefolder, cifar")


# --- split and prepared files ----------------------------------------------------------------


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices; the same labels and seed give the same split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    strat = labels if np.bincount(labels).min() >= 3 else None
    rest, test = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=strat
    )
    val_share = val_fraction / (1 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, random_state=seed,
        stratify=labels[rest] if strat is not None else None,
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def write_prepared(out_dir: Path, raw: RawDataset, splits: dict[str, np.ndarray],
                   source: str) -> dict[str, Any]:
    """Write the splits and meta.json into ``out_dir`` (which the caller swaps in atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_x = raw.images[splits["train"]].astype(np.float64) / 255
    meta = {
        "source": source,
        "source_sha256": raw.sha256,
        "classes": raw.classes,
        "num_classes": len(raw.classes),
        "shape": list(raw.images.shape[1:]),
        "counts": {name: int(len(ix)) for name, ix in splits.items()},
        "mean": train_x.mean(axis=(0, 2, 3)).round(6).tolist(),
        "std": np.maximum(train_x.std(axis=(0, 2, 3)), 1e-3).round(6).tolist(),
    }
    for name, ix in splits.items():
        np.savez(out_dir / f"{name}.npz", x=raw.images[ix], y=raw.labels[ix])
    import json

    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_prepared(data_dir: str | Path) -> Prepared:
    """Read what ``prepare`` wrote: uint8 image tensors, int64 labels and the meta dict."""
    import json

    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise ShrinkflowError(f"{meta_path}: not found (run the prepare stage first)")
    splits = []
    for name in ("train", "val", "test"):
        with np.load(data_dir / f"{name}.npz") as npz:
            splits.append((torch.from_numpy(npz["x"].copy()), torch.from_numpy(npz["y"].copy())))
    return Prepared(*splits, meta=json.loads(meta_path.read_text()))
