"""The web chat adapter: a page served by ``internvl-bot serve``, and a widget other sites embed.

A browser session is one conversation (``web:<session id>``), identified by a signed cookie. The page
posts messages with their files (``multipart/form-data``; the browser shows upload progress) and
receives every reply event of its conversation over Server-Sent Events (``GET /api/events``): the
answer streams in as plain text and, once complete, is replaced by Markdown the server rendered
with raw HTML disabled, so neither a user nor the model can inject markup or script. History comes
from the store after a reload. No build step: the page is plain HTML, CSS and JavaScript.

Security: an optional access token (an environment variable names it), cookies signed with a key
from the environment or generated once into ``data_dir``, ``SameSite`` cookies plus a custom header
on every POST (cross-site forms cannot set it), and a Content-Security-Policy without inline script.
Embedded where third-party cookies are blocked, the page sends its signed session in a header; the two
GETs that cannot carry headers (the event stream, a download) use a short-lived, single-purpose ticket
(``POST /api/tickets``), never the session itself in a URL.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from adapters.common.markdown import HtmlFormat
from bot.config import AdapterSection, Settings
from bot.errors import StartupError
from bot.l10n import i18n
from bot.ops.logs import register_secret

if TYPE_CHECKING:
    from adapters.web.adapter import WebAdapter
    from bot.runtime import Runtime

PLATFORM = "web"
COOKIE = "internvl_bot_session"
CSRF_HEADER = "X-InternVL-Bot"
SESSION_HEADER = "X-InternVL-Bot-Session"
STATIC = Path(__file__).parent.parent / "web_static"
HEARTBEAT_SECONDS = 15.0
UPLOAD_MAX_AGE = 7 * 86400
#: How long a ticket for the event stream (seconds) and for a download is good for.
EVENTS_TICKET_SECONDS = 60
FILE_TICKET_SECONDS = 600
BUS_CHANNEL = "internvl_bot_web"
FILE_BUCKET = "webfile:"  # the store's stash: one bucket per file a session can download
FILES_KEPT = 20
FILES_MAX_AGE = 86400.0  # a download link older than a day is not offered again (ask for a new export)
FILE_ID = re.compile(r"[0-9a-f]{32}\Z")

#: Labels of the page itself; their texts are the ``ui_<name>`` entries of the catalogs (bot/l10n/locales).
UI_KEYS = ("send", "attach", "placeholder", "human", "reset", "persona", "language", "waiting", "back", "auto",
           "uploading", "you", "bot", "reconnecting", "demo", "title", "delete", "delete_confirm", "too_many",
           "too_big", "feedback_up", "feedback_down", "feedback_thanks")


def ui_texts(lang: str) -> dict[str, str]:
    """The page's labels in ``lang`` (English where a catalog lacks one)."""
    # placeholders the page fills in itself stay placeholders
    return {key: i18n.text(f"ui_{key}", lang, name="{name}", size="{size}", limit="{limit}") for key in UI_KEYS}


class WebSettings(AdapterSection):
    """The web chat served by ``internvl-bot serve`` (also embeddable as a widget)."""

    enabled: bool = True
    title: str = "InternVL assistant"
    access_token_env: str = Field(
        "INTERNVL_BOT_WEB_ACCESS_TOKEN",
        description="environment variable holding an access token; when it is set, the page asks for it",
    )
    session_secret_env: str = Field(
        "INTERNVL_BOT_WEB_SESSION_SECRET",
        description="environment variable holding the cookie-signing key; unset = a key generated in data_dir",
    )
    session_days: int = Field(30, ge=1, description="how long a browser keeps its conversation")
    embed_origins: list[str] = Field(
        default_factory=list, description="sites allowed to embed the widget (https://help.example.com)"
    )
    max_files_per_message: int = Field(10, ge=1, le=64)


_html = HtmlFormat()


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML disabled (shown as text) and unsafe link schemes refused."""
    return _html.render(text).text


def session_secret(settings: Settings, conf: WebSettings) -> bytes:
    """The cookie-signing key: from the environment, else generated once into ``data_dir`` (mode 0600)."""
    value = os.environ.get(conf.session_secret_env, "")
    if value:
        register_secret(value)
        return value.encode()
    if settings.store.backend == "postgres":
        # a key per replica would make each replica refuse the others' cookies: every reload a new conversation
        raise StartupError(f"store.backend is postgres (replicas): set {conf.session_secret_env} to the same secret "
                           "on every replica (for example: openssl rand -hex 32)")
    path = settings.data_path / "web-session.key"
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def build(runtime: Runtime, conf: WebSettings) -> WebAdapter:
    """``serve``'s constructor (see adapters/registry.py): the page says when the model is the demo one."""
    from adapters.web.adapter import WebAdapter

    web = WebAdapter.build(runtime, conf)
    assert runtime.engine is not None
    web.demo = runtime.engine.info.demo
    return web


def __getattr__(name: str) -> object:
    """``from adapters.web import WebAdapter`` as before the web chat became a package (imported on first use:
    the adapter module imports this one)."""
    if name == "WebAdapter":
        from adapters.web.adapter import WebAdapter

        return WebAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
