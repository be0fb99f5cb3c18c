"""prepare: read the configured source and write a deterministic train/val/test split.

Output: data/prepared/{train,val,test}_{x,y}.npy (uint8 images N x C x H x W, int64 labels),
opened memory-mapped by the later stages, and meta.json (class names, shape, counts, which split
was used, train-only normalisation mean/std, sha256 of the source).
"""

from shrinkflow.core.errors import run_stage
from shrinkflow.core.outputs import commit_outputs
from shrinkflow.data.prepare import make_splits, resolve_split, write_prepared
from shrinkflow.data.sources import check_source, load_source
from shrinkflow.params.load import load_section
from shrinkflow.params.prepare import PrepareParams

OUT_DIR = "data/prepared"


def main() -> None:
    p = load_section(PrepareParams)
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


if __name__ == "__main__":
    run_stage(main)
