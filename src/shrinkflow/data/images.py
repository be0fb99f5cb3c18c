"""The one image policy, shared by ``prepare`` (image folders) and ``predict``: how a file becomes
the uint8 (C, H, W) array a model sees. Pillow and numpy only (``predict`` runs without torch).

1. Decode with Pillow. An image over ``Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb
   limit, 89.5 M pixels) is refused with one line before its pixels are decoded.
2. Modes. 8-bit modes are converted with Pillow's ``convert`` to ``L`` (grey, ITU-R 601-2 luma)
   or ``RGB`` (grey replicated): ``1``, ``L``, ``P`` (palette), ``RGB``, ``CMYK`` and ``YCbCr``
   (Pillow's conversions), and their alpha variants (``LA``, ``PA``, ``RGBA``, ...: alpha is
   dropped). 16-bit greyscale (``I;16*``, and ``I`` holding 0..65535 as 16-bit PNGs decode) is
   scaled to 8 bits (``round(v / 257)``, so 65535 -> 255). Anything else (32-bit or float
   pixels, LAB, HSV) is refused with one line naming the file and the mode.
3. Size, ``prepare.resize``: ``squash`` (the default and the original behaviour: a bilinear
   resize to size x size, aspect ratio not kept), ``crop`` (the shorter side to the size, then
   the centre square, ``ImageOps.fit``) or ``letterbox`` (the longer side to the size, centred
   on black, ``ImageOps.pad``). For ``crop`` / ``letterbox`` a JPEG is decoded at a reduced
   scale first (``Image.draft``, at least 2x the target side: faster, same result in both).

The model card records the policy (``preprocessing.resize``: ``bilinear`` for squash, the name
otherwise), and ``predict`` applies it through this same module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shrinkflow.core.errors import ShrinkflowError

POLICIES = ("squash", "crop", "letterbox")
CARD_NAMES = {"squash": "bilinear", "crop": "center_crop", "letterbox": "letterbox"}
EIGHT_BIT = {"1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
BILINEAR = Image.Resampling.BILINEAR  # antialiased when shrinking


def policy_from_card(name: str, source: str | Path) -> str:
    """The resize policy a card's ``preprocessing.resize`` names; one line if none does."""
    for policy, card_name in CARD_NAMES.items():
        if name == card_name:
            return policy
    raise ShrinkflowError(f"{source}: model card 'preprocessing.resize' = {name!r}: expected one "
                          f"of {', '.join(CARD_NAMES.values())}")


def _refuse(path: Path, why: str) -> ShrinkflowError:
    return ShrinkflowError(f"{path}: {why}")


def _to_mode(im: Image.Image, mode: str, path: Path) -> Image.Image:
    """Step 2 of the module docstring."""
    if im.mode in EIGHT_BIT:
        return im.convert(mode)
    if im.mode in SIXTEEN_BIT:
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise _refuse(path, f"mode {im.mode} image with values outside 0..65535; expected "
                                "8- or 16-bit pixels")
        grey = Image.fromarray(np.rint(arr / 257).astype(np.uint8), "L")
        return grey.convert(mode)
    raise _refuse(path, f"mode {im.mode} image ({'float' if im.mode == 'F' else 'unsupported'} "
                        "pixels); expected 8- or 16-bit grey, palette, RGB(A) or CMYK")


def _resize(im: Image.Image, size: tuple[int, int], policy: str) -> Image.Image:
    """Step 3; ``size`` is (width, height)."""
    if policy == "squash":
        return im if im.size == size else im.resize(size, BILINEAR)
    if policy == "crop":
        return ImageOps.fit(im, size, method=BILINEAR)
    if policy == "letterbox":
        return ImageOps.pad(im, size, method=BILINEAR, color=0)
    raise ValueError(f"unknown resize policy {policy!r}; expected one of {', '.join(POLICIES)}")


def image_size(path: str | Path) -> tuple[int, int]:
    """An image file's own (width, height), from its header (nothing is decoded); one line
    naming the file when it is not a readable image."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise _refuse(Path(path), f"not a readable image ({type(exc).__name__})") from None


def read_image(path: str | Path, channels: int, height: int, width: int,
               policy: str = "squash") -> np.ndarray:
    """One image file as uint8 (channels, height, width), by the module's policy; one line
    naming the file when it cannot be read that way."""
    path = Path(path)
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as im:
            pixels = im.size[0] * im.size[1]
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                raise _refuse(path, f"{im.size[0]}x{im.size[1]} = {pixels:,} pixels, over the "
                                    f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,}")
            if policy != "squash" and im.format == "JPEG":
                im.draft(im.mode, (2 * width, 2 * height))
            im = _resize(_to_mode(im, mode, path), (width, height), policy)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as exc:  # what Pillow raises for damaged or hostile files
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _refuse(path, f"not a readable image ({type(exc).__name__}: {reason})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
