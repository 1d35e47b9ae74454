"""The console adapter in-process, and ``internvl-bot chat`` as a real subprocess."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter, locale_hint
from bot.conversation.manager import ConversationManager
from bot.engines import EchoEngine
from bot.store import SQLiteStore
from tests.conftest import image_bytes, make_settings

ROOT = Path(__file__).resolve().parent.parent


async def run_console(tmp_path: Path, script: str, engine: EchoEngine | None = None,
                      conversation: str = "alice") -> tuple[str, EchoEngine]:
    settings = make_settings(tmp_path)
    store = SQLiteStore(settings.store_path)
    await store.open()
    engine = engine or EchoEngine(record=True)
    manager = ConversationManager(settings, store, engine)
    out = io.StringIO()
    console = ConsoleAdapter(manager, conversation=conversation, stdin=io.StringIO(script), stdout=out)
    await manager.start()
    await console.run()
    await manager.stop()
    await store.close()
    return out.getvalue(), engine


async def test_piped_session_with_an_image_and_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes(1200, 900))
    out, engine = await run_console(
        tmp_path,
        f"hello there\n/image {photo}\nwhat is in this photo?\n/help\n/quit\nnever read\n",
    )
    lines = out.splitlines()
    assert "bot> echo: hello there" in lines
    assert "[attached photo.jpg: it goes with your next message]" in lines
    assert "bot> [image 1: 1200x900, 13 tiles]" in lines
    assert lines[lines.index("bot> [image 1: 1200x900, 13 tiles]") + 1] == "echo: what is in this photo?"
    assert any(line.startswith("/reset — ") for line in lines)
    # /help also names what only the console has
    assert "bot> In this console: /image PATH or /file PATH attaches a file to your next message; /quit leaves." \
        in lines
    assert "never read" not in out
    assert len(engine.calls) == 2


async def test_missing_image_path_is_answered_politely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "pt_BR.UTF-8")
    out, engine = await run_console(tmp_path, "/image /no/such/photo.jpg\nolá\n")
    assert "bot> (!) Arquivo não encontrado: /no/such/photo.jpg" in out
    assert engine.calls[-1][-1].images == ()


async def test_conversation_survives_a_restart(tmp_path: Path) -> None:
    await run_console(tmp_path, "my boiler shows error F28\n")
    _, engine = await run_console(tmp_path, "what error did I mention?\n")
    assert [m.text for m in engine.calls[-1][1:]] == [
        "my boiler shows error F28", "echo: my boiler shows error F28", "what error did I mention?",
    ]
    _, other = await run_console(tmp_path, "hi\n", conversation="bob")
    assert [m.role for m in other.calls[-1]] == ["system", "user"]


def test_locale_hint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    assert locale_hint() is None
    monkeypatch.setenv("LANG", "C.UTF-8")
    assert locale_hint() is None
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    assert locale_hint() == "de"


def cli(*args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args], cwd=cwd, input=stdin, capture_output=True, text=True,
        timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.slow
def test_chat_command_with_the_demo_model_made_on_first_run(tmp_path: Path) -> None:
    photo = tmp_path / "pump.jpg"
    photo.write_bytes(image_bytes(800, 600))
    result = cli("chat", cwd=tmp_path, stdin=f"/image {photo}\nwhat is wrong with this pump?\n/persona tutor\n")
    assert result.returncode == 0, result.stderr
    assert "DEMO MODEL" in result.stderr
    assert "RANDOM NOISE" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[attached pump.jpg: it goes with your next message]"
    assert lines[1].startswith("bot> ")
    assert len(lines[1]) > len("bot> ")
    assert lines[-1] == "bot> Persona switched to “Tutor”."
    assert (tmp_path / "data" / "demo-model" / "config.json").exists()
    db = sqlite3.connect(tmp_path / "data" / "internvl-bot.sqlite3")
    states = db.execute("SELECT role, kind, state FROM messages ORDER BY id").fetchall()
    assert states == [("user", "chat", "answered"), ("assistant", "chat", "answered"),
                      ("user", "command", "answered"), ("assistant", "command", "answered")]
    assert len(list((tmp_path / "data" / "attachments").rglob("*"))) > 0


def test_bad_config_stops_startup_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("engine:\n  kind: gpt\n")
    result = cli("chat", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("internvl-bot: error: ")
    assert "engine.kind" in result.stderr


def test_missing_model_folder_stops_startup_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("engine:\n  transformers:\n    model: ./models/not-here\n")
    result = cli("chat", cwd=tmp_path)
    assert result.returncode == 2
    assert "model folder ./models/not-here not found" in result.stderr
    assert result.stderr.count("\n") == 1


async def test_forget_deletes_a_conversation_for_real(tmp_path: Path) -> None:
    photo = tmp_path / "private.png"
    photo.write_bytes(image_bytes(300, 200, fmt="PNG"))
    await run_console(tmp_path, f"/image {photo}\nmy private photo\n", conversation="alice")
    await run_console(tmp_path, "hello\n", conversation="bob")
    files = [p for p in (tmp_path / "data" / "attachments").rglob("*") if p.is_file()]
    assert len(files) == 1
    (tmp_path / "config.yaml").write_text(f"data_dir: {tmp_path / 'data'}\n")
    result = cli("forget", "--conversation", "console:alice", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "deleted 2 message(s) and 1 file(s)" in result.stdout
    assert not files[0].exists()
    db = sqlite3.connect(tmp_path / "data" / "internvl-bot.sqlite3")
    assert db.execute("SELECT DISTINCT conversation_id FROM messages").fetchall() == [("console:bob",)]
