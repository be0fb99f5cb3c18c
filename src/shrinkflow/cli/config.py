"""Apply a config overlay to params.yaml: ``shrinkflow-config apply configs/28x28-gray-cpu.yaml``.

A file under ``configs/`` holds only the keys that differ from the shipped params.yaml (a data
shape and device); this merges them into params.yaml in one step, so four copies of a 156-line
file no longer have to be kept in sync by hand. The merge is a round trip through ruamel.yaml
(DVC's own YAML library), so params.yaml keeps its comments and key order and only the changed
values move; ``git diff params.yaml`` shows exactly what the overlay did.

Bad input is one ``error:`` line, exit code 2, and params.yaml is left as it was: an overlay key
that params.yaml does not have (a typo would otherwise add a key every stage refuses), a
section where params.yaml has a value or the other way round, or a merged result that a
section's schema refuses (validated before the file is replaced).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_origin

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import atomic_path
from shrinkflow.params.all_sections import SECTIONS
from shrinkflow.params.load import read_yaml, validate_section


def _merge(base: Any, overlay: dict[str, Any], where: str, source: str) -> list[str]:
    """Set every overlay value in ``base`` (a ruamel mapping) in place; returns the dotted keys
    whose value changed."""
    changed = []
    for key, value in overlay.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ShrinkflowError(f"{source}: {dotted} is not a key of params.yaml (expected one "
                                  "of " + ", ".join(map(str, base)) + ")")
        if isinstance(value, dict) != isinstance(base[key], dict):
            kind = "a section" if isinstance(base[key], dict) else "a value"
            raise ShrinkflowError(f"{source}: {dotted} is {kind} in params.yaml, the overlay "
                                  f"gives {value!r}")
        if isinstance(value, dict) and free_mapping(dotted):  # e.g. ladder.rungs: replaced
            if dict(base[key]) != value:
                new = _flow(value)  # one line, as params.yaml writes `rungs: {}`
                new.ca.comment = base[key].ca.comment  # the comment after it stays
                base[key] = new
                changed.append(dotted)
        elif isinstance(value, dict):
            changed += _merge(base[key], value, dotted, source)
        elif base[key] != value:
            base[key] = _like(base[key], value)
            changed.append(dotted)
    return changed


def free_mapping(dotted: str) -> bool:
    """Whether the schema makes ``dotted`` a mapping of the user's own keys (``ladder.rungs``,
    ``model.options``), which an overlay replaces whole, not key by key."""
    section, *parts = dotted.split(".")
    node: Any = SECTIONS.get(section)
    for part in parts:
        field = getattr(node, "model_fields", {}).get(part)
        if field is None:
            return False
        node = field.annotation
    return get_origin(node) is dict


def _flow(value: Any) -> Any:
    """``value`` with every mapping and list in YAML flow style (``{w16: {widths: [16]}}``)."""
    if isinstance(value, dict):
        node: Any = CommentedMap((k, _flow(v)) for k, v in value.items())
    elif isinstance(value, list):
        node = CommentedSeq(_flow(v) for v in value)
    else:
        return value
    node.fa.set_flow_style()
    return node


def _like(old: Any, value: Any) -> Any:
    """``value`` in ``old``'s YAML style: a flow list (``[96, 192, 384]``) stays one line."""
    if isinstance(old, CommentedSeq) and isinstance(value, list):
        new = CommentedSeq(value)
        if old.fa.flow_style():
            new.fa.set_flow_style()
        new.ca.comment = old.ca.comment  # a comment after the list belongs to the list
        return new
    return value


def apply_overlay(overlay_path: str | Path, params_path: str | Path = "params.yaml") -> list[str]:
    """Merge ``overlay_path`` into ``params_path``, validated, comments kept; returns the dotted
    keys that changed (empty when the overlay was already applied)."""
    overlay = read_yaml(overlay_path)
    if not isinstance(overlay, dict):
        raise ShrinkflowError(f"{overlay_path}: expected a mapping of params.yaml sections")
    # round trip: comments, key order and quoting survive; ruamel's round-trip loader builds
    # only YAML's own types (like safe_load), never Python objects
    round_trip = YAML()
    round_trip.width = 4096  # never re-wrap a long line
    round_trip.preserve_quotes = True  # "" stays "", not ''
    params = round_trip.load(Path(params_path).read_text())
    changed = _merge(params, overlay, "", str(overlay_path))
    text = io.StringIO()
    round_trip.dump(params, text)
    merged = YAML(typ="safe").load(text.getvalue())
    for section, schema in SECTIONS.items():
        validate_section(section, merged.get(section), schema, str(overlay_path))
    if changed:
        with atomic_path(params_path) as tmp:
            tmp.write_text(text.getvalue())
    return changed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shrinkflow-config", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="merge a configs/ overlay into params.yaml")
    apply.add_argument("overlay", help="e.g. configs/28x28-gray-cpu.yaml")
    apply.add_argument("--params", default="params.yaml", help="the file to change")
    args = parser.parse_args(argv)
    changed = apply_overlay(args.overlay, args.params)
    print(f"{args.params}: {len(changed)} value(s) set from {args.overlay}"
          + (": " + ", ".join(changed) if changed else " (already applied)"))


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point (``shrinkflow-config``): bad input is one ``error:`` line, exit code 2."""
    run_stage(lambda: main(argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
