"""The documentation a reader navigates: a README of at most 300 lines from which every page of
``docs/`` is reachable, every relative link (and its #anchor) resolves, and every command the
pages show names a module that exists and a config that loads with its overrides."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[(?:[^\]]*)\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    out, seen = set(), {}
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            s = slug(line.lstrip("#"))
            k = seen.get(s, 0)
            seen[s] = k + 1
            out.add(s if k == 0 else f"{s}-{k}")
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"^(https?|mailto):", t)]


def test_readme_is_short_and_reaches_every_page():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 300
    reached, todo = {readme}, [readme]
    while todo:
        page = todo.pop()
        for t in links(page):
            path = (page.parent / t.split("#")[0]).resolve() if not t.startswith("#") else page
            if path.suffix == ".md" and path.is_file() and path not in reached:
                reached.add(path)
                todo.append(path)
    missing = [p.name for p in pages() if p not in reached]
    assert not missing, f"docs pages no link leads to from the README: {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_link_resolves(page):
    broken = []
    for t in links(page):
        file, _, anchor = t.partition("#")
        target = (page.parent / file).resolve() if file else page
        if not target.exists():
            broken.append(t)
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(t)
    assert not broken, f"{page.name}: broken links {broken}"


def commands(page: Path) -> list[list[str]]:
    """The fedanchors commands of a page's shell blocks and inline code, one argv each (continuations joined)."""
    out = []
    text = page.read_text()
    inline = re.findall(r"`((?:python3? -m fedanchors|fedanchors )[^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for block in [*FENCE.findall(text), *(" ".join(c.split()) for c in inline)]:
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", line):
                part = part.strip()
                # plugin commands (FEDANCHORS_PLUGINS=...) are run by tests/test_recipes.py
                plain = "<" not in part and "..." not in part and "FEDANCHORS_PLUGINS" not in part
                if re.search(r"(^|\s)(python3? -m fedanchors|fedanchors )", part) and plain:
                    out.append(shlex.split(part, comments=True))
    return out


def _module_and_args(argv: list[str]) -> tuple[str, list[str]]:
    while argv and re.match(r"^[A-Z_]+=", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if argv[0] == "fedanchors":  # the console script: a command of fedanchors.cli.COMMANDS
        from fedanchors.cli import COMMANDS

        if len(argv) < 2 or argv[1].startswith("-"):
            return "fedanchors.cli", argv[1:]
        assert argv[1] in COMMANDS, f"fedanchors has no command {argv[1]!r}"
        return f"fedanchors.{argv[1].replace('-', '_')}", argv[2:]
    i = argv.index("-m")
    return argv[i + 1], argv[i + 2 :]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_command_names_a_module_and_a_loadable_config(page, monkeypatch):
    from fedanchors.configure import load_config

    monkeypatch.chdir(ROOT)
    for argv in commands(page):
        module, args = _module_and_args(argv)
        if module == "fedanchors.cli" or args[:1] == ["--help"]:
            continue
        assert importlib.util.find_spec(module) is not None, f"{page.name}: no module {module} ({shlex.join(argv)})"
        if "--config" not in args or "--sweep" in args:
            continue
        path = args[args.index("--config") + 1]
        if not path.endswith(".yaml"):
            continue  # a placeholder (--config X)
        assert (ROOT / path).is_file(), f"{page.name}: {shlex.join(argv)}: no config {path}"
        if module in ("fedanchors.simulate", "fedanchors.cli.simulate"):
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            load_config(path, sets)  # a ConfigError here is a command the docs show that cannot run
