"""prepare: read the configured source and write a deterministic train/val/test split.

Output: data/prepared/{train,val,test}.npz (uint8 images, int64 labels) and meta.json
(class names, shape, counts, train-only normalisation mean/std, sha256 of the source).
"""

from shrinkflow.artifacts import commit_outputs
from shrinkflow.data import check_source, load_source, split_indices, write_prepared
from shrinkflow.errors import run_stage
from shrinkflow.params import load_section

OUT_DIR = "data/prepared"


def main() -> None:
    p = load_section("prepare")
    check_source(p.source, p.path)  # fail before touching data/prepared
    raw = load_source(p.source, p.path, p.image_size, p.channels)
    print(f"[prepare] {p.source}: {len(raw.labels)} images of {raw.images.shape[1:]}, "
          f"{len(raw.classes)} classes")
    splits = split_indices(raw.labels, p.val_fraction, p.test_fraction, p.seed)
    with commit_outputs() as out:
        meta = write_prepared(out.directory(OUT_DIR), raw, splits, p.source)
    print(f"[prepare] wrote {OUT_DIR}: {meta['counts']}  mean {meta['mean']}  std {meta['std']}")


if __name__ == "__main__":
    run_stage(main)
