"""``internvl-bot serve`` as a real process: readiness, the web API, SIGTERM mid-answer, restart, --check (the
platforms' checks are in tests/test_check.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import image_bytes
from tests.fakes.serving import free_port

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"X-InternVL-Bot": "1"}



class Serve:
    def __init__(self, folder: Path, config: str, env: dict[str, str] | None = None, port: int = 0) -> None:
        self.folder = folder
        (folder / "config.yaml").write_text(config, encoding="utf-8")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adapters.cli", "serve", "--port", str(self.port)], cwd=self.folder,
            env={**self.env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve did not become ready:\n" + self.output())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read() if self.proc.stdout else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        s.kill()


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_sigterm_mid_answer_then_restart_answers_exactly_once(tmp_path: Path, serves: list[Serve]) -> None:
    config = "engine:\n  kind: echo\n  echo:\n    delay_ms: 100\nserver:\n  grace_seconds: 0.3\nlogging:\n  json_format: true\n"
    serve = Serve(tmp_path, config)
    serves.append(serve)
    serve.start()
    client = httpx.Client(base_url=serve.url, timeout=10)
    assert client.get("/").status_code == 200
    long_question = " ".join(f"word{i}" for i in range(40))  # ~4 s of streaming at 100 ms a word
    with client.stream("GET", "/api/events") as events:
        assert client.post("/api/messages", data={"text": long_question}, headers=HEADERS).status_code == 202
        lines = events.iter_lines()
        first = next(json.loads(line[6:]) for line in lines if line.startswith("data: ")
                     and json.loads(line[6:])["type"] in ("partial", "chunk"))
        assert first["text"] == "echo:"
        started = time.monotonic()
        assert serve.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        tail = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    # the page was told the answer stopped, and the stream was closed for the restart
    assert any(e["type"] == "done" and e["interrupted"] for e in tail)
    log_lines = [json.loads(line) for line in serve.output().splitlines() if line.startswith("{")]
    assert any("shutting down" in line["message"] for line in log_lines)
    db = tmp_path / "data" / "internvl-bot.sqlite3"
    assert rows(db, "SELECT state FROM messages WHERE role = 'user'") in ([("received",)], [("answering",)])

    serve = Serve(tmp_path, config, port=serve.port)
    serves.append(serve)
    serve.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if rows(db, "SELECT state FROM messages WHERE role = 'user'") == [("answered",)]:
            break
        time.sleep(0.2)
    answers = rows(db, "SELECT text FROM messages WHERE role = 'assistant'")
    assert answers == [(f"echo: {long_question}",)]
    # the browser's cookie still names the conversation: after the restart it sees the answer
    history = client.get("/api/history").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert serve.stop(signal.SIGINT) == 0


def test_out_of_the_box_serve_answers_a_photo_with_the_demo_model(tmp_path: Path, serves: list[Serve],
                                                                  demo_model: Path) -> None:
    serve = Serve(tmp_path, f"engine:\n  transformers:\n    model: {demo_model}\n")
    serves.append(serve)
    serve.start()
    client = httpx.Client(base_url=serve.url, timeout=30)
    page = client.get("/")
    assert page.status_code == 200 and "<title>InternVL assistant</title>" in page.text
    assert client.get("/api/session").json()["demo"] is True
    response = client.post("/api/messages", data={"text": "what is on this photo?"},
                           files={"files": ("photo.jpg", image_bytes(1024, 768), "image/jpeg")}, headers=HEADERS)
    assert response.status_code == 202
    deadline = time.monotonic() + 60
    history: list[dict] = []
    while time.monotonic() < deadline:
        history = client.get("/api/history").json()["messages"]
        if len(history) == 2:
            break
        time.sleep(0.2)
    assert [m["role"] for m in history] == ["user", "assistant"] and history[1]["text"]
    assert serve.stop() == 0
    out = serve.output()
    assert f"web chat at http://127.0.0.1:{serve.port}/" in out and "DEMO MODEL" in out


def test_check_validates_without_serving_and_never_prints_secrets(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INTERNVL_BOT_OPERATOR_TOKEN": "op-secret-value",
           "INTERNVL_BOT_HANDOFF_SECRET": "hook-secret-value"}
    (tmp_path / "config.yaml").write_text(
        "engine:\n  kind: echo\nhandoff:\n  webhook_url: http://127.0.0.1:9/hook\n", encoding="utf-8")
    ok = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "✓ engine: echo" in ok.stdout and "✓ operator: the inbox at /operator and the operator API" in ok.stdout
    assert "✓ handoff: events go to http://127.0.0.1:9/hook" in ok.stdout
    assert "secret-value" not in ok.stdout + ok.stderr
    offline = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check", "--offline"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert offline.returncode == 0, offline.stderr
    assert "ok: engine echo ready" in offline.stdout and "operator API enabled" in offline.stdout
    assert "secret-value" not in offline.stdout + offline.stderr
    del env["INTERNVL_BOT_HANDOFF_SECRET"]
    bad = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "INTERNVL_BOT_HANDOFF_SECRET" in bad.stderr
    (tmp_path / "config.yaml").write_text("engine:\n  transformers:\n    model: /nowhere\n", encoding="utf-8")
    missing = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "✗ engine: engine.transformers.model: model folder /nowhere" in missing.stdout
    offline = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check", "--offline"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert offline.returncode == 2 and "/nowhere" in offline.stderr


def test_check_reports_an_unreachable_model_server(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "config.yaml").write_text(
        f"engine:\n  kind: openai_http\n  openai_http:\n    base_url: http://127.0.0.1:{port}/v1\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"✗ engine: cannot reach http://127.0.0.1:{port}/ (All connection attempts failed)" in run.stdout
    assert "Traceback" not in run.stderr


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "config.yaml").write_text("engine:\n  kind: echo\n", encoding="utf-8")
        run = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--port", str(port)], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in run.stderr


def test_one_instance_per_data_dir_and_a_crash_leaves_no_stale_lock(tmp_path: Path, serves: list[Serve]) -> None:
    config = "engine:\n  kind: echo\n"
    first = Serve(tmp_path, config)
    serves.append(first)
    first.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    second = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--port", str(free_port())],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"pid {first.proc.pid}" in lines[0] and str(tmp_path / "data") in lines[0]
    assert "PostgreSQL" in lines[0] and "Several machines" in lines[0]
    # the console would resume the same pending messages: refused too
    chat = subprocess.run([sys.executable, "-m", "adapters.cli", "chat"], cwd=tmp_path, env=env, input="hi\n",
                          capture_output=True, text=True, timeout=60)
    assert chat.returncode == 2 and "already running on the data directory" in chat.stderr
    # --check only reads: it runs beside the service
    check = subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert httpx.get(f"{first.url}/readyz", timeout=5).status_code == 200  # the first one goes on serving

    first.kill()  # kill -9: the kernel drops the lock with the process
    again = Serve(tmp_path, config, port=first.port)
    serves.append(again)
    again.start()
    assert again.stop() == 0


def test_the_banner_lists_every_url_served_and_each_adapter_says_ready(tmp_path: Path, serves: list[Serve]) -> None:
    config = ("engine:\n  kind: echo\nserver:\n  public_url: https://bot.example.com\n"
              "adapters:\n  chatwoot:\n    enabled: true\n    base_url: https://chatwoot.example.com\n"
              "  helpdesk_api:\n    enabled: true\n")
    serve = Serve(tmp_path, config, env={"CHATWOOT_BOT_TOKEN": "cw-token-123", "CHATWOOT_WEBHOOK_SECRET": "cw-secret-123",
                                         "HELPDESK_API_SECRET": "api-secret-123",
                                         "INTERNVL_BOT_OPERATOR_TOKEN": "operator-token-123"})
    serves.append(serve)
    serve.start()
    client = httpx.Client(base_url=serve.url, timeout=10)
    assert client.get("/").status_code == 200
    assert client.post("/api/messages", data={"text": "hello"}, headers=HEADERS).status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(client.get("/api/history").json()["messages"]) < 2:
        time.sleep(0.1)
    assert serve.stop() == 0
    out = serve.output()
    for url in ("https://bot.example.com/operator", "https://bot.example.com/chatwoot/webhook",
                "https://bot.example.com/api/helpdesk/v1/", "https://bot.example.com/readyz"):
        assert url in out, out
    for name in ("web", "chatwoot", "helpdesk_api"):
        assert f"adapters.{name} ready" in out, out
    assert "adapters.chatwoot ready: https://chatwoot.example.com" in out
    # one access-log line per answered message
    answered = [line for line in out.splitlines() if " answered web:" in line]
    assert len(answered) == 1 and "answer tokens" in answered[0], out
