"""The boundaries DEVELOPERS.md and STYLE.md ask for, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_MODULES = {"adapters", "slack_bolt", "slack_sdk", "telegram", "aiogram"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_adapter_and_no_platform_sdk() -> None:
    for path in (ROOT / "bot").rglob("*.py"):
        bad = imported_modules(path) & PLATFORM_MODULES
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
