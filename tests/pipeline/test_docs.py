"""The documentation: the README is a front door, the rest is a MkDocs site that builds with
--strict (no broken link or anchor, no page outside the nav), and the shell blocks the tests run
live in the docs in the order a reader meets them."""

import re
import subprocess
import sys
from pathlib import Path

from doc_blocks import ROOT, marked_blocks, nav_pages

README = ROOT / "README.md"


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)]


def test_mkdocs_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site/index.html").is_file()
    for page in nav_pages():
        assert page.is_file(), page


def test_readme_is_a_front_door_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    pipeline, tests = bash_blocks(text)[:2]
    assert pipeline.endswith("&& dvc repro") and "[dev]" not in pipeline  # the pipeline only
    assert tests.endswith("&& pytest")
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci == tests, "CI must run exactly the README's test command"


def test_readme_links_to_pages_that_exist():
    for target in re.findall(r"\]\((docs/[^)#]+)", README.read_text()):
        assert (ROOT / target).is_file(), target


def test_tested_blocks_appear_in_the_order_the_tests_run_them():
    """test_collab runs each round trip as remote -> share -> share-exp -> clone -> exp-pull ->
    reply -> pull-back (remote-s3 -> share -> clone is the other), and the queue as grid ->
    failed-logs -> failed-remove -> show-compare: a reader going top to bottom meets them in
    that order."""
    order = list(marked_blocks())
    for sequence in (["remote-folder", "share", "share-exp", "clone", "exp-pull", "reply",
                      "pull-back"],
                     ["remote-s3", "share", "clone"],
                     ["grid-teacher", "failed-logs", "failed-remove", "show-compare"]):
        assert all(name in order for name in sequence), (sequence, order)
        positions = [order.index(name) for name in sequence]
        assert positions == sorted(positions), (sequence, order)
    pages = {name: page.name for name, (page, _) in marked_blocks().items()}
    assert pages["share"] == pages["clone"] == "team.md"


def test_no_stale_names_in_the_docs():
    """Names the reorganisation changed (stage select -> select_final, export -> export_onnx,
    stages/compare.py -> shrinkflow-compare, flat modules -> subpackages)."""
    stale = re.compile(r"`select` (stage|picks|ships|writes|fails|decides)|export@|"
                       r"stages/compare\.py|stages/select\.py|"
                       r"shrinkflow\.(runtime|ensemble|predict|bench|errors)\b")
    for page in [README, *Path(ROOT / "docs").glob("*.md")]:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            assert not stale.search(line), f"{page.name}:{n}: {line}"


def test_no_code_fence_inside_a_list():
    """MkDocs' Markdown (Python-Markdown, no superfences) renders an indented ``` fence as
    inline text: keep every fenced block at the left margin."""
    for page in Path(ROOT / "docs").glob("*.md"):
        for n, line in enumerate(page.read_text().splitlines(), 1):
            assert not re.match(r"\s+```", line), f"{page.name}:{n}: an indented code fence"
