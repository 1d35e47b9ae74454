"""A real django-helpdesk (tests/helpdesk_site) on 127.0.0.1, in a subprocess, driven over HTTP.

``async with helpdesk_site(tmp_path, new_ticket_webhook=..., followup_webhook=...) as site:`` migrates a fresh
SQLite database, seeds it (queues ``support`` and ``billing``; superuser ``bot``/``bot-password`` for the
framework's REST calls; staff user ``agent``/``agent-password`` for the humans), starts Django's threaded WSGI
server on a free port with django-helpdesk's own webhook variables set, and stops it on exit (≈2.3 s to start
on 2 cores, most of it the migrations).

It runs in a subprocess because django-helpdesk posts its webhooks synchronously, inside the request that
caused them, while the receiver (the framework's server) runs in the test's event loop. For the same reason
every method that can make django-helpdesk post a webhook is ``async``: it must not block the loop that has to
answer the webhook. All methods are ``async``.

What the customer side does, as in production:
- ``customer_ticket(via="web")`` fills in the public form ``/tickets/submit/`` over HTTP (anonymous, CSRF
  cookie and token, multipart with the optional attachment): ``PublicTicketForm.save`` → ticket + first public
  follow-up without a user + the new-ticket webhook.
- ``customer_ticket(via="email")`` / ``customer_followup`` deliver an e-mail through django-helpdesk's mailbox
  code (``helpdesk.email.extract_email_metadata``, see tests/helpdesk_site/testhooks.py): a public follow-up
  without a user, attachments named ``part-1_<filename>``, and the new-ticket / follow-up webhook.
Staff side: the REST API under ``/api/`` (staff only, HTTP Basic).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent

# (filename, content, MIME type)
Attachment = tuple[str, bytes, str]

# django-helpdesk's default status values (helpdesk/settings.py)
OPEN, REOPENED, RESOLVED, CLOSED, DUPLICATE = 1, 2, 3, 4, 5


class HelpdeskSite:
    """A started site. ``url`` is the root without a trailing slash (``http://127.0.0.1:PORT``)."""

    api_user = "bot"
    api_password = "bot-password"
    agent_user = "agent"
    agent_password = "agent-password"

    def __init__(self, url: str, info: dict[str, Any], directory: Path, startup_s: float) -> None:
        self.url = url
        self.queues: dict[str, int] = info["queues"]  # slug -> id
        self.users: dict[str, int] = info["users"]  # username -> id
        self.directory = directory
        self.media_root = directory / "media"
        self.mail_dir = directory / "mail"  # e-mails django-helpdesk sent (Django's file backend)
        self.log_path = directory / "site.log"
        self.startup_s = startup_s

    # -- HTTP clients -------------------------------------------------------------------------------------

    def client(self, user: str | None = "bot", **kwargs: Any) -> httpx.AsyncClient:
        """A client of the site; ``user`` ``"bot"``/``"agent"`` adds HTTP Basic auth, ``None`` is anonymous."""
        passwords = {self.api_user: self.api_password, self.agent_user: self.agent_password}
        kwargs.setdefault("auth", httpx.BasicAuth(user, passwords[user]) if user else None)
        return httpx.AsyncClient(base_url=self.url, timeout=20, **kwargs)

    async def api(self, method: str, path: str, user: str | None = "bot", **kwargs: Any) -> Any:
        async with self.client(user) as client:
            response = await client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} → {response.status_code}: {response.text[:2000]}")
        return response.json()

    # -- the customer -------------------------------------------------------------------------------------

    async def customer_ticket(self, title: str, description: str, attachment: Attachment | None = None,
                              queue: str = "support", *, email: str = "customer@example.com",
                              via: str = "web") -> int:
        """A customer opens a ticket (``via="web"``: the public form; ``"email"``: an e-mail to the queue).

        Returns the ticket id. Either way django-helpdesk posts the new-ticket webhook before this returns.
        """
        if via == "email":
            body: dict[str, Any] = {"title": title, "description": description, "queue": queue,
                                    "submitter_email": email}
            if attachment:
                body["attachment"] = _encoded(attachment)
            return int((await self.api("POST", "/test/customer-ticket/", user=None, json=body))["ticket_id"])
        assert via == "web", via
        async with self.client(None) as client:
            form = await client.get("/tickets/submit/")
            form.raise_for_status()
            token = client.cookies["csrftoken"]
            data = {"csrfmiddlewaretoken": token, "queue": str(self.queues[queue]), "title": title,
                    "body": description, "priority": "3", "submitter_email": email}
            files = {"attachment": attachment} if attachment else None
            response = await client.post("/tickets/submit/", data=data, files=files)
        if response.status_code != 302:
            raise AssertionError(f"the public form refused the ticket ({response.status_code}): "
                                 f"{_form_errors(response.text)}")
        # → /view/?ticket=<queue slug>-<id>&email=...&key=<secret key>
        ticket_for_url = parse_qs(urlsplit(response.headers["location"]).query)["ticket"][0]
        return int(ticket_for_url.rsplit("-", 1)[1])

    async def customer_followup(self, ticket_id: int, comment: str, attachment: Attachment | None = None) -> int:
        """The customer answers by e-mail: a public follow-up without a user; returns its id.

        django-helpdesk posts the follow-up webhook before this returns. A closed ticket is re-opened
        (status 2) by the e-mail; a resolved one stays resolved (``HELPDESK_EMAIL_REOPEN_STATUSES``)."""
        body: dict[str, Any] = {"ticket_id": ticket_id, "comment": comment}
        if attachment:
            body["attachment"] = _encoded(attachment)
        return int((await self.api("POST", "/test/customer-followup/", user=None, json=body))["followup_id"])

    # -- the knowledge base (staff edit it in the admin: a test-only hook stands in) -----------------------------

    async def kb_item(self, category: str, title: str = "", question: str = "", answer: str = "", *,
                      item_id: int | None = None, category_title: str = "", public: bool = True,
                      delete: bool = False) -> int:
        """Create (or, with ``item_id``, edit; with ``delete``, remove) a knowledge-base item of ``category`` (a
        slug; the category is created on first use). Returns the item's id; its page is
        ``/kb/<category>/?kbitem=<id>``."""
        body: dict[str, Any] = {"category": category, "category_title": category_title or category.title(),
                                "public": public, "delete": delete}
        if item_id is not None:
            body["id"] = item_id
        body.update({k: v for k, v in (("title", title), ("question", question), ("answer", answer)) if v})
        return int((await self.api("POST", "/test/kb-item/", user=None, json=body))["id"])

    # -- staff, through the REST API ------------------------------------------------------------------------

    async def staff_followup(self, ticket_id: int, comment: str, public: bool = True, *, user: str = "agent",
                             new_status: int | None = None,
                             attachments: list[Attachment] | None = None) -> dict[str, Any]:
        """``POST /api/followups/`` as ``user`` (Basic auth); returns the created follow-up as the API shows it.

        The follow-up's ``user`` is always the caller (the view overrides any ``user`` sent). django-helpdesk
        posts the follow-up webhook during this request, before the response."""
        data: dict[str, Any] = {"ticket": ticket_id, "comment": comment, "public": public}
        if new_status is not None:
            data["new_status"] = new_status
        if not attachments:
            return await self.api("POST", "/api/followups/", user=user, json=data)
        form = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in data.items()}
        return await self.api("POST", "/api/followups/", user=user, data=form,
                                files=[("attachments", attachment) for attachment in attachments])

    async def ticket(self, ticket_id: int) -> dict[str, Any]:
        """``GET /api/tickets/<id>/`` as ``bot``: the ticket with its whole ``followup_set``."""
        return await self.api("GET", f"/api/tickets/{ticket_id}/")

    async def followups(self, ticket_id: int) -> list[dict[str, Any]]:
        """The ticket's follow-ups, oldest first: ``id``, ``user`` (id or None), ``public``, ``comment``,
        ``title``, ``new_status``, ``followupattachment_set`` (``file`` is an absolute URL here), ``date``…"""
        return sorted((await self.ticket(ticket_id))["followup_set"], key=lambda f: f["id"])

    async def update_ticket(self, ticket_id: int, **fields: Any) -> dict[str, Any]:
        """``PATCH /api/tickets/<id>/`` as ``bot``, e.g. ``status=REOPENED, assigned_to=site.users["agent"]``.

        A plain model update: no follow-up, no webhook."""
        return await self.api("PATCH", f"/api/tickets/{ticket_id}/", json=fields)

    async def download(self, url: str, user: str | None = None) -> httpx.Response:
        """GET an attachment by the URL a webhook or the API gave (relative to the site root, or absolute)."""
        async with self.client(user) as client:
            return await client.get(url)

    def sent_mail(self) -> list[str]:
        """The raw e-mails django-helpdesk has sent so far (one file per connection, oldest first)."""
        if not self.mail_dir.exists():
            return []
        return [p.read_text(errors="replace") for p in sorted(self.mail_dir.iterdir(), key=lambda p: p.stat().st_mtime)]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _encoded(attachment: Attachment) -> dict[str, str]:
    import base64

    filename, content, mime = attachment
    return {"filename": filename, "mime": mime, "base64": base64.b64encode(content).decode()}


def _form_errors(html: str) -> str:
    import re

    errors = re.findall(r'class="[^"]*(?:invalid-feedback|errorlist|alert)[^"]*"[^>]*>(.*?)</', html, re.S)
    return "; ".join(" ".join(e.split()) for e in errors if e.strip()) or html[:1000]


@contextlib.asynccontextmanager
async def helpdesk_site(tmp_path: Path, *, new_ticket_webhook: str | None = None,
                        followup_webhook: str | None = None, start_limit_s: float = 60,
                        valid_extensions: list[str] | None = None) -> AsyncIterator[HelpdeskSite]:
    """Start the site under ``tmp_path / "helpdesk"`` and stop it on exit.

    The webhook URLs go verbatim into ``HELPDESK_NEW_TICKET_WEBHOOK_URLS`` / ``HELPDESK_FOLLOWUP_WEBHOOK_URLS``
    (django-helpdesk splits the first on ``,`` and the second on a comma with whitespace on both sides);
    ``None`` or ``""`` leaves the variable unset: no webhook of that kind. Raises if the site has not printed
    its ready line within ``start_limit_s`` (it usually takes ≈2.3 s: Python, Django, the migrations).
    ``valid_extensions`` replaces django-helpdesk's default ``HELPDESK_VALID_EXTENSIONS``.
    """
    directory = tmp_path / "helpdesk"
    directory.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HELPDESK_", "DJANGO_"))}
    env.update(PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="tests.helpdesk_site.settings",
               HELPDESK_SITE_DB=str(directory / "db.sqlite3"), HELPDESK_SITE_MEDIA=str(directory / "media"),
               HELPDESK_SITE_MAIL=str(directory / "mail"), PYTHONUNBUFFERED="1")
    if new_ticket_webhook:
        env["HELPDESK_NEW_TICKET_WEBHOOK_URLS"] = new_ticket_webhook
    if followup_webhook:
        env["HELPDESK_FOLLOWUP_WEBHOOK_URLS"] = followup_webhook
    if valid_extensions:
        env["HELPDESK_SITE_VALID_EXTENSIONS"] = ",".join(valid_extensions)
    ready_path, log_path = directory / "site.out", directory / "site.log"
    started = time.monotonic()
    with open(ready_path, "wb") as out, open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "tests.helpdesk_site.wsgi", "--host", "127.0.0.1",
                                    "--port", "0"], cwd=ROOT, env=env, stdout=out, stderr=log)
    try:
        while True:
            line = ready_path.read_text()
            if line.endswith("\n"):
                info = json.loads(line)
                break
            if process.poll() is not None:
                raise RuntimeError(f"the helpdesk site exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            if time.monotonic() - started > start_limit_s:
                raise TimeoutError(f"the helpdesk site did not start:\n{log_path.read_text()[-4000:]}")
            await asyncio.sleep(0.05)
        site = HelpdeskSite(f"http://127.0.0.1:{info['port']}", info, directory, time.monotonic() - started)
        yield site
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
