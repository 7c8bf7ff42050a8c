"""The documentation runs, and shows what its code really does.

Every fenced code block under ``docs/`` is checked according to its language:

* ```` ```python ````: run as a script of its own, with ``sys.executable``, in a fresh
  temporary directory, with the repository and ``adapters`` on ``PYTHONPATH``. It must
  exit with 0. A ```` ```text ```` block right after it (blank lines aside) is its
  expected output, compared exactly.
* ```` ```pycon ````: run as a doctest.
* ```` ```console ```` (tutorial only): ``$ python FILE ARGS`` lines, run in order in one
  directory, each followed by its expected output, compared as a set of lines (the
  interleaving of concurrent instances varies; ``run_after`` times are ignored). A
  process killed by SIGKILL shows ``Killed``, as a shell prints it.

Markers: an HTML comment on the line right before a ```` ```python ```` fence.

* ``<!-- file: NAME -->``: the block is a file of the tutorial, written out as NAME
  for its console blocks instead of being run on its own.
* ``<!-- no-run -->``: the block is not run (a fragment that needs something the tests
  do not have, such as an outside service). Keep these rare.

Other blocks (sh, sql, and text that follows no python block) are prose. Relative links
in ``README.md`` and the docs must lead to a file, and an anchor to one of its headings.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "adapters"), *filter(None, [os.environ.get("PYTHONPATH")])]
    ),
}


@dataclass(frozen=True)
class Block:
    page: str  # relative to docs/
    index: int  # among the page's fenced blocks, from 0
    line: int  # of the opening fence, from 1
    lang: str
    code: str
    marker: str | None  # the HTML comment on the line before the fence
    output: str | None = None  # for python: the text block right after it

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line} (block {self.index})"

    @property
    def file(self) -> str | None:
        """For a file of the tutorial, the name it is saved as."""
        if self.marker and self.marker.startswith("file:"):
            return self.marker.removeprefix("file:").strip()
        return None


def parse(page: str) -> list[Block]:
    """The fenced blocks of a page, python blocks with their expected output."""
    lines = (DOCS / page).read_text().splitlines()
    blocks: list[Block] = []
    i = prose_from = 0  # prose_from: the first line after the previous block
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        marker = MARKER.match(lines[i - 1]) if i else None
        block = Block(
            page=page,
            index=len(blocks),
            line=i + 1,
            lang=fence.group(1),
            code="\n".join(lines[i + 1 : end]) + "\n",
            marker=marker.group(1) if marker else None,
        )
        gap = "".join(lines[prose_from:i]).strip()
        if block.lang == "text" and blocks and blocks[-1].lang == "python" and not gap:
            blocks[-1] = replace(blocks[-1], output=block.code)
        blocks.append(block)
        i = prose_from = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in parse(page)]


def blocks_of(lang: str) -> list[Any]:
    return [
        pytest.param(b, id=f"{b.page}[{b.index}]")
        for b in BLOCKS
        if b.lang == lang and b.file is None
    ]


def test_markers_are_known() -> None:
    for block in BLOCKS:
        assert block.marker in (None, "no-run") or re.fullmatch(r"file: \S+", block.marker), (
            f"{block.where}: unknown marker <!-- {block.marker} -->"
        )
        if block.file is not None or block.lang == "console":
            # Only the tutorial is run as files and commands; see test_tutorial.
            assert block.page == "tutorial.md", f"{block.where}: not run by any test"


@pytest.mark.parametrize("block", blocks_of("python"))
def test_python_block(block: Block, tmp_path: Path) -> None:
    if block.marker == "no-run":
        pytest.skip("marked <!-- no-run -->")
    script = tmp_path / "docs_block.py"
    script.write_text(block.code)
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{block.where} failed:\n{done.stderr}"
    if block.output is not None:
        assert done.stdout == block.output, f"{block.where}: output differs from the docs"


@pytest.mark.parametrize("block", blocks_of("pycon"))
def test_pycon_block(block: Block) -> None:
    test = doctest.DocTestParser().get_doctest(block.code, {}, block.where, block.page, 0)
    report: list[str] = []
    result = doctest.DocTestRunner().run(test, out=report.append)
    assert result.failed == 0, "".join(report)


# -- the tutorial ----------------------------------------------------------------------


def normalize(lines: list[str]) -> list[str]:
    return sorted(re.sub(r"run_after=\d+\.\d+", "run_after=<time>", line) for line in lines)


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """The ``$ python ...`` commands of a console block, each with its expected output."""
    out: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            out[-1][1].append(line)
    return out


def run_python(command: str, cwd: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """Run ``python ARGS`` as the reader would; its output lines, as a terminal shows them."""
    program, *args = shlex.split(command)
    assert program == "python", f"only python commands are run, not {command!r}"
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.splitlines()
    if done.returncode == -signal.SIGKILL:
        lines.append("Killed")
    else:
        assert done.returncode == 0, f"$ {command} failed:\n{done.stderr}"
    return lines, done


def write_files(cwd: Path) -> None:
    for block in BLOCKS:
        if block.page == "tutorial.md" and block.file is not None:
            (cwd / block.file).write_text(block.code)


def test_tutorial(tmp_path: Path) -> None:
    """Write out the tutorial's files and run its commands in order, as a reader would."""
    write_files(tmp_path)
    outputs: list[tuple[str, list[str]]] = []
    for block in BLOCKS:
        if block.page != "tutorial.md" or block.lang != "console":
            continue
        for command, expected in commands(block):
            got, _ = run_python(command, tmp_path)
            assert normalize(got) == normalize(expected), (
                f"{block.where}: $ {command}\n--- got:\n" + "\n".join(got)
            )
            outputs.append((command, got))

    # The key lines, spelled out (the comparison above already covers them).
    ran = [command for command, _ in outputs]
    assert ran == [
        "python run.py",
        "python run.py",
        "python history.py order-2",
        "python crash.py",
        "python crash.py",
        "python history.py order-3",
    ]
    first, again = outputs[0][1], outputs[1][1]
    assert "order-1: completed" in first and "order-2: compensated" in first
    assert not any(line.startswith("[") for line in again), "a second start re-ran steps"
    crashed, recovered = outputs[3][1], outputs[4][1]
    assert crashed[-1] == "Killed"
    assert "unfinished: ['order-3']" in recovered and "order-3: completed" in recovered
    [key_before] = [line for line in crashed if "charge_card attempt 1, key" in line]
    [key_after] = [line for line in recovered if "charge_card attempt" in line]
    assert key_after == key_before, "the re-run after the crash must reuse attempt and key"


def test_tutorial_on_trio(tmp_path: Path) -> None:
    """The tutorial says: change the last line of run.py to run on trio."""
    pytest.importorskip("trio")
    trio_line = 'anyio.run(main, backend="trio")'
    assert f"`{trio_line}`" in (DOCS / "tutorial.md").read_text()
    write_files(tmp_path)
    run = tmp_path / "run.py"
    code = run.read_text()
    assert code.endswith("anyio.run(main)\n")
    run.write_text(code.removesuffix("anyio.run(main)\n") + trio_line + "\n")
    got, _ = run_python("python run.py", tmp_path)
    assert "order-1: completed" in got and "order-2: compensated" in got


# -- links -----------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> list[str]:
    """The lines of a Markdown file outside its fenced blocks."""
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    found: set[str] = set()
    for line in prose(path):
        heading = re.match(r"#{1,6} (.*)", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        n, unique = 0, slug
        while unique in found:
            n += 1
            unique = f"{slug}-{n}"
        found.add(unique)
    return found


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p}" for p in PAGES)])
def test_links_resolve(page: str) -> None:
    source = ROOT / page
    broken = []
    for line in prose(source):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (source.parent / file).resolve() if file else source
            if path.is_dir():
                path = path / "README.md"
            if not path.is_file():
                broken.append(f"{target}: no such file")
            elif anchor and anchor not in anchors(path):
                broken.append(f"{target}: no heading #{anchor}")
    assert broken == [], f"{page}: broken links"


def test_readme_links_to_the_docs() -> None:
    targets = {t for line in prose(ROOT / "README.md") for t in LINK.findall(line)}
    assert {"docs/tutorial.md", "docs/reference.md"} <= targets
