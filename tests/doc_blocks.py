"""The documentation's shell blocks that tests run: ```bash blocks marked
``<!-- test_collab: NAME -->``, read from the pages of mkdocs.yml's nav, in the order a reader
meets them (nav order, then position in the page)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"<!-- test_collab: (\S+) -->\s*```bash\n(.*?)```", re.DOTALL)


def nav_pages(root: Path = ROOT) -> list[Path]:
    """Every page of mkdocs.yml's nav, in reading order."""
    def walk(entry) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, dict):
            return [page for value in entry.values() for page in walk(value)]
        return [page for item in entry for page in walk(item)]
    config = yaml.safe_load((root / "mkdocs.yml").read_text())
    docs = root / config.get("docs_dir", "docs")
    return [docs / page for page in walk(config["nav"])]


def marked_blocks(root: Path = ROOT) -> dict[str, tuple[Path, str]]:
    """Block name -> (page, the block's text), in reading order (dicts keep insertion order)."""
    blocks: dict[str, tuple[Path, str]] = {}
    for page in nav_pages(root):
        for name, text in MARKED.findall(page.read_text()):
            assert name not in blocks, f"block {name!r} is marked twice ({page})"
            blocks[name] = (page, text)
    return blocks


def block_commands(name: str) -> list[str]:
    """Command lines of the block marked ``name``: comments and blank lines dropped."""
    blocks = marked_blocks()
    assert name in blocks, f"no docs page has a block marked <!-- test_collab: {name} -->"
    lines = [line.split(" #")[0].strip() for line in blocks[name][1].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]
