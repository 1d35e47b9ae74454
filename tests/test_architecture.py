"""The boundaries DEVELOPERS.md and STYLE.md ask for, checked on the source."""

from __future__ import annotations

import ast
import re
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


# -- the house (issue: bot/ by concern, Protocols for capabilities, one adapter base) -----------------

#: optional capabilities: named as Protocols in bot/seams.py and checked with isinstance, never probed
CAPABILITIES = {"elect", "notify", "listen", "waiting", "on_settled", "serves", "immediate", "reaches_people",
                "max_concurrency", "stash", "stashed", "drop_stash", "save_blob", "transcript", "locale_of"}
#: bot/'s top level holds only what every part uses; the rest lives in a package per concern
TOP_LEVEL = {"__init__.py", "types.py", "seams.py", "errors.py", "config.py", "runtime.py", "testing.py"}
CONCERNS = {"conversation", "scheduling", "handoff", "media", "l10n", "ops", "engines", "store", "knowledge",
            "training"}
#: modules of adapters/ that are not platform adapters (the composition root, shared parts, the LangChain model)
NOT_PLATFORMS = {"__init__.py", "registry.py", "server.py", "cli.py", "console.py", "langchain.py", "operator.py",
                 "quality.py"}


def _sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def test_no_capability_is_probed_with_getattr() -> None:
    found = []
    for path in _sources("bot", "adapters"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                    "getattr", "hasattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in CAPABILITIES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}(…, {node.args[1].value!r})")
    assert not found, "capabilities are Protocols in bot/seams.py, checked with isinstance: " + "; ".join(found)


def test_bot_is_grouped_by_concern() -> None:
    entries = {p.name for p in (ROOT / "bot").iterdir() if p.name != "__pycache__" and p.name != "py.typed"}
    stray = {e for e in entries if e.endswith(".py")} - TOP_LEVEL
    assert not stray, f"bot/ top level is for what every part uses; put {sorted(stray)} in a concern's package"
    assert {e for e in entries if not e.endswith(".py")} == CONCERNS


def test_every_platform_adapter_uses_the_base() -> None:
    missing = []
    for path in _sources("adapters"):
        if path.parent.name == "common" or (path.parent == ROOT / "adapters" and path.name in NOT_PLATFORMS):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Adapter"):
                bases = {ast.unparse(b).split("[")[0] for b in node.bases}
                if "PlatformAdapter" not in bases:
                    missing.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not missing, f"platform adapters subclass adapters.common.base.PlatformAdapter: {missing}"


def test_no_module_imports_another_modules_private_name() -> None:
    found = []
    for path in _sources("bot", "adapters"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, f"private names stay in their module: {found}"


def test_the_postgres_scheduler_uses_only_the_stores_public_methods() -> None:
    source = (ROOT / "bot/store/postgres/claims.py").read_text(encoding="utf-8")
    private = sorted(set(re.findall(r"self\.store\._\w+", source)))
    assert not private, f"claims.py reaches into the store's private helpers: {private}"
