"""The README's module map (the *Design* section) names every module of gateway/, so a newcomer can find each one.

A module `gateway/a/b.py` is named when the map has its path, or an entry for its folder (`gateway/a/ ...`) whose
text names `b.py`; a package's `__init__.py` when the map has an entry for its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_map() -> str:
    """The first fenced block after `## Design` in README.md."""
    design = (ROOT / "README.md").read_text().split("\n## Design\n", 1)[1]
    return design.split("```", 2)[1]


def entries(block: str) -> dict[str, str]:
    """Each entry's path (`gateway/...`) and its whole text, continuation lines included."""
    found: dict[str, str] = {}
    path = ""
    for line in block.splitlines():
        if match := re.match(r"(gateway/\S*)\s", line + " "):
            path = match.group(1)
            found[path] = line
        elif path:
            found[path] += " " + line.strip()
    return found


def is_named(module: Path, block: str, listed: dict[str, str]) -> bool:
    relative = module.relative_to(ROOT).as_posix()
    folder = relative.rsplit("/", 1)[0] + "/"
    if relative in listed or (folder != "gateway/" and folder in listed and module.name == "__init__.py"):
        return True
    if folder == "gateway/":
        return module.name in block  # a top-level module named inside another's entry (config_types.py)
    return folder in listed and re.search(rf"(?<![\w/]){re.escape(module.name)}", listed[folder]) is not None


def test_the_readme_module_map_names_every_module() -> None:
    block = module_map()
    listed = entries(block)
    modules = sorted(p for p in (ROOT / "gateway").rglob("*.py") if "__pycache__" not in p.parts)
    missing = [m.relative_to(ROOT).as_posix() for m in modules if not is_named(m, block, listed)]
    assert missing == [], "modules missing from the README's module map (## Design)"


def test_the_module_map_names_no_module_that_is_gone() -> None:
    listed = entries(module_map())
    gone = [path for path in listed if not (ROOT / path).exists()]
    assert gone == []
