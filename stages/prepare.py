"""prepare: read the configured source and write a deterministic train/val/test split.

Output: data/prepared/{train,val,test}_{x,y}.npy (uint8 images N x C x H x W, int64 labels),
opened memory-mapped by the later stages, and meta.json (class names, shape, counts, which split
was used, train-only normalisation mean/std, sha256 of the source).

With ``prepare.task: detection``: the images and their boxes instead (data.prepare_detection,
read back by data.prepared_boxes).
"""

from shrinkflow.core.errors import run_stage
from shrinkflow.core.outputs import commit_outputs
from shrinkflow.data.prepare import make_splits, resolve_split, write_prepared
from shrinkflow.data.prepare_detection import (
    check_detection_source,
    read_detection,
    write_detection,
)
from shrinkflow.data.sources import check_source, load_source
from shrinkflow.params.load import load_section
from shrinkflow.params.prepare import PrepareParams

OUT_DIR = "data/prepared"


def main() -> None:
    p = load_section(PrepareParams)
    if p.task == "detection":
        prepare_boxes(p)
        return
    check_source(p.source, p.path)  # fail before touching data/prepared
    source = load_source(p.source, p.path, p.image_size, p.channels, p.resize)
    counts = {part.name: len(part.labels) for part in source.parts}
    print(f"[prepare] {p.source}: {counts} images of {source.shape}, "
          f"{len(source.classes)} classes")
    split = resolve_split(source, p.split)
    splits = make_splits(source, split, p.val_fraction, p.test_fraction, p.seed, p.source)
    with commit_outputs() as out:
        meta = write_prepared(out.directory(OUT_DIR), source, splits, p.source, split)
    print(f"[prepare] wrote {OUT_DIR} ({split} split): {meta['counts']}  mean {meta['mean']}  "
          f"std {meta['std']}")


def prepare_boxes(p: PrepareParams) -> None:
    """Detection (``prepare.task: detection``): images and boxes, every box checked first."""
    check_detection_source(p)
    splits = read_detection(p)  # every box and image checked before anything is written
    with commit_outputs() as out:
        meta = write_detection(out.directory(OUT_DIR), splits, p.source)
    print(f"[prepare] wrote {OUT_DIR} ({p.source}, detection): {meta['counts']} images, "
          f"{meta['boxes']} boxes, {meta['num_classes']} classes")


if __name__ == "__main__":
    run_stage(main)
