"""Several ``internvl-bot serve`` processes on one PostgreSQL database, behind a real nginx.

Used by tests/test_replicas.py and bench/replicas.py. Each replica has its own data directory and port; they
share the database, the web session secret and the platform's secrets, as replicas on several machines do.
nginx balances over them with the configuration the README's "Several machines" section gives (streaming
unbuffered, a request that could not reach a replica passed to the next). :class:`WebUser` is a browser:
a session through nginx, an event stream held open on one replica, messages posted through nginx (again,
with the same request id, when nginx answers 502 — the intake recognises a request it stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.serving import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
HEADERS = {"X-InternVL-Bot": "1"}
SESSION_SECRET = "replicas-share-this-secret"


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps nothing: each simulated browser carries its own session cookie."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


def browsers(**kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client for many simulated browsers at once (no shared cookie jar)."""
    return httpx.AsyncClient(cookies=_NoCookies(), **kwargs)



NGINX_CONF = """\
worker_processes 1;
daemon off;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream internvl_bot {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 60m;
        location / {{
            proxy_pass http://internvl_bot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # every intake route is idempotent (platform event ids, the page's request ids): a request a
            # replica could not answer is safely passed to the next one
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            # answers stream (server-sent events): nothing buffered, long reads
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


@dataclass
class Replica:
    index: int
    folder: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        path = self.folder / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    """``n`` replicas of ``serve`` and nginx in front (see the module docstring)."""

    def __init__(self, folder: Path, database_url: str, n: int, *, delay_ms: int = 0, lease: float = 3,
                 chatwoot: Any = None, extra_config: str = "", concurrency: int = 16) -> None:
        self.folder = folder
        self.database_url = database_url
        self.chatwoot = chatwoot
        self.replicas = [Replica(i, folder / f"replica{i}", free_port()) for i in range(n)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.nginx: subprocess.Popen[bytes] | None = None
        adapters = ""
        if chatwoot is not None:
            adapters = f"adapters:\n  chatwoot:\n    enabled: true\n    base_url: {chatwoot.url}\n    persona: support\n"
        self.config = (f"engine:\n  kind: echo\n  max_concurrency: {concurrency}\n  echo:\n    delay_ms: {delay_ms}\n"
                       f"store:\n  backend: postgres\n  lease_seconds: {lease}\n"
                       "server:\n  grace_seconds: 1\n"
                       "logging:\n  level: INFO\n" + adapters + extra_config)

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "INTERNVL_BOT_DATABASE_URL": self.database_url,
               "INTERNVL_BOT_WEB_SESSION_SECRET": SESSION_SECRET}
        if self.chatwoot is not None:
            env["CHATWOOT_BOT_TOKEN"] = self.chatwoot.bot_token
            env["CHATWOOT_WEBHOOK_SECRET"] = self.chatwoot.secret or ""
        env.pop("INTERNVL_BOT_CONFIG", None)
        return env

    # -- life cycle -----------------------------------------------------------------------

    def start_replica(self, replica: Replica) -> None:
        replica.folder.mkdir(parents=True, exist_ok=True)
        (replica.folder / "config.yaml").write_text(
            f"data_dir: {replica.folder / 'data'}\n" + self.config, encoding="utf-8")
        with (replica.folder / "serve.log").open("ab") as out:
            replica.proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--port", str(replica.port)],
                                            cwd=replica.folder, env=self.env(), stdout=out, stderr=subprocess.STDOUT)

    async def wait_ready(self, replica: Replica, timeout: float = 120) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                if not replica.alive:
                    raise AssertionError(f"replica {replica.index} exited:\n{replica.log()[-4000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{replica.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise AssertionError(f"replica {replica.index} not ready:\n{replica.log()[-4000:]}")

    def start_nginx(self) -> None:
        assert NGINX is not None, "nginx is not installed (apt-get install nginx)"
        directory = self.folder / "nginx"
        directory.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server 127.0.0.1:{r.port} max_fails=1 fail_timeout=10s;" for r in self.replicas)
        (directory / "nginx.conf").write_text(NGINX_CONF.format(
            dir=directory, port=self.port, servers=servers, user="user root;" if os.geteuid() == 0 else ""))
        self.nginx = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def start(self) -> None:
        for replica in self.replicas:
            self.start_replica(replica)
        await asyncio.gather(*(self.wait_ready(r) for r in self.replicas))
        self.start_nginx()
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                assert self.nginx is not None and self.nginx.poll() is None, \
                    self.nginx.stderr.read().decode() if self.nginx and self.nginx.stderr else "nginx exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError("nginx did not come up")

    def kill(self, replica: Replica) -> float:
        """SIGKILL: no goodbye, no release of anything. Returns the time it happened."""
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(30)
        return time.time()

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.alive:
                assert replica.proc is not None
                replica.proc.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            if replica.proc is not None:
                try:
                    replica.proc.wait(30)
                except subprocess.TimeoutExpired:
                    replica.proc.kill()
                    replica.proc.wait()
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()

    def replica_of_pid(self, pid: int) -> Replica | None:
        return next((r for r in self.replicas if r.proc is not None and r.proc.pid == pid), None)


@dataclass
class WebUser:
    """One browser: its session (through nginx), its event stream (held on ``stream_url``'s replica)."""

    cluster: Cluster
    stream_url: str
    cookie: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    posted: list[tuple[int, str]] = field(default_factory=list)  # (message id, text)
    retries: int = 0
    _task: asyncio.Task[None] | None = None
    _open: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, http: httpx.AsyncClient) -> None:
        response = await http.get(f"{self.cluster.url}/")  # the page sets the session cookie
        response.raise_for_status()
        self.cookie = response.cookies.get("internvl_bot_session") or ""
        assert self.cookie, "no session cookie"
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._open.wait(), 20)

    async def _listen(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http, http.stream(
                "GET", f"{self.stream_url}/api/events", headers={"Cookie": f"internvl_bot_session={self.cookie}"}) as response:
            response.raise_for_status()
            self._open.set()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def say(self, http: httpx.AsyncClient, text: str) -> int:
        """POST one message through nginx; the same request id again after a failure nginx could not hide."""
        request_id = uuid.uuid4().hex
        for attempt in range(20):
            try:
                response = await http.post(
                    f"{self.cluster.url}/api/messages", data={"text": text},
                    headers={**HEADERS, "X-Request-Id": request_id, "Cookie": f"internvl_bot_session={self.cookie}"})
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 202:
                message_id = int(response.json()["id"])
                self.posted.append((message_id, text))
                return message_id
            if response is not None and response.status_code == 200 and response.json().get("duplicate"):
                message_id = int(response.json()["id"])  # an earlier attempt was stored; its answer was lost
                self.posted.append((message_id, text))
                return message_id
            if response is not None and response.status_code < 500 and response.status_code != 429:
                raise AssertionError(f"refused: {response.status_code} {response.text[:300]}")
            self.retries += 1
            await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError(f"message not accepted after retries: {text}")

    def answers(self) -> dict[int, list[str]]:
        """Final answers the page was sent, per question id."""
        out: dict[int, list[str]] = {}
        for event in self.events:
            if event.get("type") == "done" and isinstance(event.get("reply_to"), int):
                out.setdefault(event["reply_to"], []).append(event.get("text", ""))
        return out


# -- what the database says ---------------------------------------------------------------------------


async def count(url: str, sql: str, params: tuple[Any, ...] = ()) -> int:
    from psycopg import AsyncConnection

    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute(sql, params)).fetchone()  # type: ignore[arg-type]
        return int(row[0]) if row and row[0] is not None else 0


async def answered(url: str) -> int:
    return await count(url, "SELECT count(*) FROM messages WHERE role = 'user' AND state = 'answered'")


@dataclass
class Killed:
    replica: Replica
    at: float  # time.time() of the SIGKILL
    conversations: set[str]  # those it held claims on, answering


async def kill_one_answering(cluster: Cluster, url: str, *, spare: Replica | None = None,
                             timeout: float = 60) -> Killed:  # noqa: ASYNC109
    """SIGKILL a replica (not ``spare``) at a moment it is answering: it holds a live claim on a conversation
    whose message is being answered."""
    from psycopg import AsyncConnection

    async with asyncio.timeout(timeout), await AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            rows = await (await conn.execute(
                "SELECT c.replica, c.conversation_id FROM claims c JOIN messages m ON"
                " m.conversation_id = c.conversation_id AND m.state = 'answering'"
                " WHERE c.lease_until > extract(epoch from now())")).fetchall()
            for name, _ in rows:
                replica = cluster.replica_of_pid(int(name.split(":")[1]))
                if replica is not None and replica is not spare and replica.alive:
                    at = cluster.kill(replica)
                    return Killed(replica, at, {c for n, c in rows if n == name})
            await asyncio.sleep(0.01)


async def taken_over_after(url: str, killed: Killed) -> float | None:
    """Seconds from the kill to the first answer made in a conversation the killed replica was answering."""
    from psycopg import AsyncConnection

    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute(
            "SELECT min(created_at) FROM messages WHERE role = 'assistant' AND created_at > %s"
            " AND conversation_id = ANY(%s)", (killed.at, list(killed.conversations)))).fetchone()
    return None if not row or row[0] is None else float(row[0]) - killed.at


@dataclass
class Verdict:
    questions: int
    lost: int  # questions without an answer
    duplicates: int  # answers beyond the first to a question
    order_violations: int  # conversations whose answers are not in the order of their questions
    wrong: int  # answers that are not the echo of their question
    pending: int


async def verdict(url: str) -> Verdict:
    from psycopg import AsyncConnection

    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        rows = await (await conn.execute(
            "SELECT conversation_id, id, role, state, text, reply_to FROM messages ORDER BY id")).fetchall()
    questions = {r[1]: r for r in rows if r[2] == "user"}
    answers: dict[int, list[Any]] = {}
    order: dict[str, list[int]] = {}
    for r in rows:
        if r[2] == "assistant" and r[5] in questions:
            answers.setdefault(r[5], []).append(r)
            order.setdefault(r[0], []).append(r[5])
    asked: dict[str, list[int]] = {}
    for q in questions.values():
        asked.setdefault(q[0], []).append(q[1])
    return Verdict(
        questions=len(questions),
        lost=sum(1 for q in questions if q not in answers),
        duplicates=sum(len(a) - 1 for a in answers.values()),
        order_violations=sum(1 for c, ids in asked.items() if order.get(c, []) != [i for i in ids if i in answers]),
        wrong=sum(1 for q, a in answers.items() if a[0][4] != f"echo: {questions[q][4]}"),
        pending=sum(1 for q in questions.values() if q[3] in ("received", "answering")),
    )
