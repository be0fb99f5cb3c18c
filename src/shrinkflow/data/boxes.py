"""Detection annotations: COCO instances JSON and Pascal VOC XML, read into one form, every box
checked before anything is built from it (detection's data layer: ``prepare.source: coco`` and
``voc``, data.prepare_detection).

The form: per image its file name, size and boxes as ``(x0, y0, x1, y1)`` pixels (x right, y
down, x1 / y1 exclusive, as torchvision's detection models take them) with a class index into
``classes``. A box is refused when it is not four finite numbers, has no area, leaves the image,
names an unknown class, or belongs to no listed image. Every bad annotation gets one line naming
its file, the annotation and what was expected; all of them are reported at once (capped), so a
user fixes a file in one pass, not one error per run.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.core.errors import ShrinkflowError, echo

MAX_LINES = 20  # bad annotations listed in one error; the rest are counted


@dataclass
class ImageBoxes:
    file: str  # relative to the split's image folder
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x0 y0 x1 y1
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # into classes


@dataclass
class DetectionSplit:
    images: list[ImageBoxes]
    classes: list[str]


def box_problem(box: Any, width: int, height: int) -> str | None:
    """What is wrong with the ``(x0, y0, x1, y1)`` box in a ``width`` x ``height`` image, or
    None. The one box rule: COCO and VOC convert to corners first, then both ask this."""
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in box)):
        return f"expected 4 finite numbers, got {echo(box)}"
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return f"box {echo(list(box))} has no area (width {x1 - x0:g}, height {y1 - y0:g})"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"box {echo(list(box))} leaves the {width}x{height} image"
    return None


def raise_if_bad(source: Path, problems: list[str]) -> None:
    if problems:
        more = len(problems) - MAX_LINES
        lines = problems[:MAX_LINES] + ([f"{source}: ... and {more} more"] if more > 0 else [])
        raise ShrinkflowError(f"{len(problems)} bad annotation(s):\n" + "\n".join(lines))


def _split(images: dict[Any, ImageBoxes], found: dict[Any, list], classes: list[str]
           ) -> DetectionSplit:
    for key, image in images.items():
        pairs = found.get(key, [])
        if pairs:
            image.boxes = np.asarray([b for b, _ in pairs], np.float32)
            image.labels = np.asarray([c for _, c in pairs], np.int64)
    return DetectionSplit(list(images.values()), classes)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_coco(path: Path) -> DetectionSplit:
    """A COCO instances file: ``images`` (id, file_name, width, height), ``categories`` (id,
    name), ``annotations`` (image_id, category_id, bbox ``[x, y, w, h]``)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShrinkflowError(f"{path}: not a readable COCO JSON file ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        raise ShrinkflowError(f"{path}: expected a COCO instances object with lists 'images', "
                              f"'annotations' and 'categories'")
    problems: list[str] = []
    categories = {c.get("id"): str(c.get("name")) for c in doc["categories"]
                  if isinstance(c, dict)}
    index = {cid: i for i, cid in enumerate(categories)}  # classes in the file's order
    images: dict[Any, ImageBoxes] = {}
    for n, im in enumerate(doc["images"]):
        ok = isinstance(im, dict) and isinstance(im.get("file_name"), str) and all(
            _positive_int(im.get(k)) for k in ("width", "height"))
        if not ok:
            problems.append(f"{path}: images[{n}]: expected file_name and positive integer "
                            f"width and height, got {echo(im)}")
            continue
        images[im.get("id")] = ImageBoxes(im["file_name"], im["width"], im["height"])
    found: dict[Any, list] = {}
    for n, ann in enumerate(doc["annotations"]):
        ann = ann if isinstance(ann, dict) else {}
        where = f"{path}: annotation {echo(ann.get('id', n))}"
        image = images.get(ann.get("image_id"))
        if image is None:
            problems.append(f"{where}: image_id {echo(ann.get('image_id'))} is not in 'images'")
            continue
        where += f" ({image.file})"
        if ann.get("category_id") not in index:
            problems.append(f"{where}: category_id {echo(ann.get('category_id'))} is not in "
                            f"'categories' ({echo(list(categories))})")
            continue
        bbox = ann.get("bbox")
        box = bbox
        if isinstance(bbox, list) and len(bbox) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            box = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
        problem = box_problem(box, image.width, image.height)
        if problem:
            problems.append(f"{where}: bbox [x, y, w, h] {echo(bbox)}: {problem}")
            continue
        found.setdefault(ann["image_id"], []).append((box, index[ann["category_id"]]))
    raise_if_bad(path, problems)
    return _split(images, found, list(categories.values()))


def _xml_number(node: ET.Element | None, tag: str) -> float | None:
    text = node.findtext(tag) if node is not None else None
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def read_voc(folder: Path, classes: list[str] | None = None) -> DetectionSplit:
    """A Pascal VOC folder: ``Annotations/*.xml`` (filename, size, objects with a name and a
    bndbox). VOC pixels are 1-based and inclusive, so ``xmin - 1, ymin - 1, xmax, ymax`` are the
    corners. ``classes``: the known names (VOC's 20 for the real set); None: every name found,
    sorted."""
    files = sorted((folder / "Annotations").glob("*.xml"))
    if not files:
        raise ShrinkflowError(f"{folder}: expected Pascal VOC XML files in Annotations/, "
                              f"found none")
    problems: list[str] = []
    parsed: list[tuple[Path, ImageBoxes, list[tuple[str, list[float | None]]]]] = []
    for xml in files:
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            problems.append(f"{xml}: not well-formed XML ({exc})")
            continue
        size = root.find("size")
        width, height = _xml_number(size, "width"), _xml_number(size, "height")
        name = root.findtext("filename")
        if not name or not width or not height or width <= 0 or height <= 0:
            problems.append(f"{xml}: expected <filename> and a positive <size> width and height")
            continue
        objects = [(str(o.findtext("name")), [_xml_number(o.find("bndbox"), t) for t in
                                              ("xmin", "ymin", "xmax", "ymax")])
                   for o in root.iter("object")]
        parsed.append((xml, ImageBoxes(name, int(width), int(height)), objects))
    names = classes if classes is not None else sorted({n for *_, objs in parsed
                                                        for n, _ in objs})
    index = {n: i for i, n in enumerate(names)}
    images: dict[Any, ImageBoxes] = {}
    found: dict[Any, list] = {}
    for xml, image, objects in parsed:
        images[xml] = image
        for k, (name, corners) in enumerate(objects):
            where = f"{xml}: object {k} ({name})"
            if name not in index:
                problems.append(f"{where}: unknown class {echo(name)} (expected one of "
                                f"{echo(names)})")
                continue
            box = corners if None in corners else [corners[0] - 1, corners[1] - 1,
                                                   corners[2], corners[3]]
            problem = box_problem(box, image.width, image.height)
            if problem:
                problems.append(f"{where}: bndbox {echo(corners)}: {problem}")
                continue
            found.setdefault(xml, []).append((box, index[name]))
    raise_if_bad(folder, problems)
    return _split(images, found, list(names))
