"""The one loader of params.yaml: reads the file, validates a section against its schema.

Each section's schema is in its own module (``params/<section>.py``), so a stage imports only the
schemas it reads and editing one reruns only the stages that read that section.

Validation happens when a stage starts, before it reads data or touches an output, so a typo in
params.yaml costs a second and destroys nothing. Each error names the full key
(``teacher.train.epochs``) and what is allowed there.

What is rejected, and why:
- every float must be finite (``allow_inf_nan=False`` on every section): ``T: .inf`` trained a
  NaN student that replaced the good one;
- every count that must be positive is (epochs, batch sizes, calibration samples, repeats...),
  and values have an upper bound where larger ones mean nothing (``lr <= 10``, ``T <= 100``,
  ``epochs <= 10000``, batch sizes ``<= 65536``);
- ``device: cuda`` on a machine without a visible CUDA GPU;
- a key missing from params.yaml. The schema defaults equal the shipped params.yaml (a test
  compares them) and serve library callers and tests; a stage never falls back on them, because
  DVC tracks the file, not our defaults. The error names the key and the shipped value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import PydanticUndefined

from shrinkflow.core.errors import MAX_ECHO, ShrinkflowError, clip, echo
from shrinkflow.params.common import Section

S = TypeVar("S", bound=Section)


# Modules of this package that are not a section's schema; every other one is (``select.py``
# holds the ``select`` section). Listing files rather than importing the schemas keeps a stage's
# imports (and so its DVC deps) to the schemas it reads; tests/unit/params/test_load.py checks the
# list against ``all_sections.SECTIONS``.
NOT_SECTIONS = {"__init__", "common", "load", "all_sections"}


def known_sections() -> list[str]:
    """The top-level sections params.yaml may have: one per schema module of this package."""
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in NOT_SECTIONS)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read params.yaml with yaml.safe_load (dvc.api costs ~1 s per stage here) and refuse a
    missing or empty file and unknown top-level sections (a misspelled section name would
    otherwise be silently ignored), each in one line naming the file."""
    path = Path(path)
    known = known_sections()
    if not path.exists():
        raise ShrinkflowError(f"{path}: params file not found; every stage reads its settings "
                              f"from it (sections {', '.join(known)}); restore it, e.g. "
                              f"`git checkout {path}`")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ShrinkflowError(f"{path}: cannot read params file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ShrinkflowError(f"{path}: not valid YAML: {clip(' '.join(str(exc).split()))}"
                              ) from exc
    if data is None:
        raise ShrinkflowError(f"{path}: params file is empty; expected the sections "
                              f"{', '.join(known)}")
    if not isinstance(data, dict):
        raise ShrinkflowError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        raise ShrinkflowError(f"{path}: unknown section(s) {clip(', '.join(unknown))} (known "
                              f"sections: {', '.join(known)})")
    return data


def _describe(section: str, schema: type[BaseModel], err: dict[str, Any]) -> tuple[str, str]:
    """(full key, what is wrong) for one pydantic error; list items are named by index."""
    names = [str(p) for p in err["loc"] if not isinstance(p, int)]
    items = [str(p) for p in err["loc"] if isinstance(p, int)]
    key = ".".join([section, *names])
    if err["type"] == "extra_forbidden":
        parent: Any = schema
        for part in err["loc"][:-1]:
            if get_origin(parent) is dict:  # e.g. ladder.rungs.NAME: the key names an item
                parent = get_args(parent)[1]
                continue
            field = getattr(parent, "model_fields", {}).get(str(part))
            parent = field.annotation if field is not None else None
            if parent is None:
                break
        allowed = ", ".join(getattr(parent, "model_fields", {})) or "?"
        return key, f"unknown key (allowed here: {allowed})"
    where = f"item {', '.join(items)}: " if items else ""
    return key, f"{where}{err['msg']} (got {echo(err.get('input'))})"


def _one_line_per_key(described: list[tuple[str, str]]) -> list[str]:
    """Join the problems of one key (e.g. two bad list items) into that key's one line."""
    by_key: dict[str, list[str]] = {}
    for key, problem in described:
        by_key.setdefault(key, []).append(problem)
    return [f"{key}: {clip('; '.join(problems), 3 * MAX_ECHO)}" for key, problems in by_key.items()]


def missing_keys(prefix: str, value: Section, shipped: Section | None, source: str) -> list[str]:
    """One line per key of ``value``'s schema that the file did not set, naming the shipped value.

    ``shipped`` is the schema's default for this (sub)section, which a test keeps equal to the
    shipped params.yaml; a sub-section's shipped values come from its parent's default (e.g.
    ``prune.train.lr`` is 0.02 while ``teacher.train.lr`` is 0.05), not from its class.
    """
    lines = []
    for name, field in type(value).model_fields.items():
        key = f"{prefix}.{name}"
        default = getattr(shipped, name) if shipped is not None else field.get_default(
            call_default_factory=True)
        if name not in value.model_fields_set:
            if default is PydanticUndefined:  # a required key: pydantic has already said so
                continue
            if isinstance(default, BaseModel):
                default = default.model_dump()
            lines.append(f"{key}: missing from {source} (the shipped value is {default!r})")
            continue
        child = getattr(value, name)
        if isinstance(child, Section):
            same_kind = isinstance(default, type(child))
            lines += missing_keys(key, child, default if same_kind else None, source)
    return lines


def _params_error(lines: list[str]) -> ShrinkflowError:
    """One line for one problem (what a stage prints), one line per key for several."""
    if len(lines) == 1:
        return ShrinkflowError(f"invalid params: {lines[0]}")
    return ShrinkflowError("invalid params:\n  " + "\n  ".join(lines))


def validate_section(
    section: str, raw: Any, schema: type[S], source: str = "params.yaml"
) -> S:
    """Validate one section's raw mapping against its schema, with errors that name full keys.

    Every key must be present: a missing one is an error naming the shipped value, never a
    silent fallback on the schema default (DVC could not see the value that ran).
    """
    try:
        value = schema.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        described = [_describe(section, schema, e) for e in exc.errors()]
        raise _params_error(_one_line_per_key(described)) from None
    try:
        shipped = schema()
    except ValidationError:  # a schema with required keys has no shipped instance
        shipped = None
    lines = missing_keys(section, value, shipped, source)
    if lines:
        raise _params_error(lines)
    return value


def load_section(schema: type[S], path: str | Path = "params.yaml") -> S:
    """Load and validate ``schema``'s section of params.yaml; raises ShrinkflowError naming the
    bad key."""
    section = schema.section
    data = read_yaml(path)
    if section not in data:
        raise ShrinkflowError(f"{path}: missing section {section!r}")
    return validate_section(section, data[section], schema, Path(path).name)
