"""Knowledge-base sources read from the platforms (bot/knowledge/remote.py): what ``internvl-bot kb add BASE
--chatwoot-portal SLUG``, ``--django-helpdesk-kb`` and ``--solved-tickets chatwoot|django-helpdesk`` index.

Locations (stored as the base's sources, or listed in ``knowledge.bases.<name>.sources``):

* ``chatwoot-portal:<slug>`` — the published articles of a Chatwoot Help Center portal, read with the account
  API (``GET /api/v1/accounts/{account}/portals/{slug}`` and its ``articles?status=published&page=N``), each
  keyed and cited by its public URL ``{base_url}/hc/{slug}/articles/{article slug}`` (on the portal's
  ``custom_domain`` when it has one). Needs ``adapters.chatwoot.base_url``, ``account_id`` and a user's
  access token in ``api_token_env`` (the agent bot's token may read no article).
* ``django-helpdesk-kb`` — the items of django-helpdesk's public knowledge base (it has no REST API for it):
  the category pages ``/kb/`` lists, each item with its title, question, answer and category, cited by its
  page ``/kb/{category}/?kbitem={id}``. No credentials: what customers can see.
* ``solved-tickets:chatwoot`` — resolved conversations (``conversations?status=resolved``, every message
  through ``messages?after=``): the customer's messages before the agent's last public reply, that reply, and
  the conversation's labels and custom attributes.
* ``solved-tickets:django-helpdesk`` — resolved and closed tickets (``/api/tickets/?status=3,4``, staff Basic
  auth): the ticket's title and description, and the public staff follow-up that resolved or closed it (the
  bot never resolves a ticket, so that answer is a person's), with the ticket's queue.

Solved tickets are not public: they are cited by title only, and before indexing their text loses e-mail
addresses, phone numbers, the names the platform gives for the customer and the agents, and greetings and
sign-offs (bot/training/privacy.py: the redaction training exports use, plus the greetings and sign-offs).
Only human agents' answers count: not the bot's own messages, not private notes.

Every request goes through :class:`Fetcher`: a 429 waits what ``Retry-After`` asks (bounded) and tries again,
a 5xx or a network failure is tried a few times, and then the source fails as one line naming the part, the
URL (never a credential: tokens travel in headers) and the fix; the ingester keeps the previous documents.
Redirects are not followed, so a token never leaves the configured host.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters.common.urlguard import require_https
from bot.config import Settings
from bot.errors import retry_after_seconds
from bot.knowledge.chunking import MARKDOWN, TEXT, clean
from bot.knowledge.remote import RemoteDocument, RemoteSource, SourceUnavailable
from bot.ops.checks import shown
from bot.ops.logs import register_secret
from bot.training.privacy import redact, strip_salutations

CHATWOOT_PORTAL = "chatwoot-portal"
HELPDESK_KB = "django-helpdesk-kb"
SOLVED = "solved-tickets"
PLATFORMS = ("chatwoot", "django-helpdesk")
MAX_PAGES = 1000  # a listing that keeps giving pages past this is not one we are reading right
RESOLVED, CLOSED = 3, 4  # django-helpdesk's statuses of a solved ticket
INCOMING, OUTGOING = 0, 1  # Chatwoot's message_type in REST answers


class Fetcher:
    """GETs for one source, with the platform's rate limit honoured and failures as one line.

    ``part``: the source's location (what each line starts with); ``fix``: what to do when the platform keeps
    failing; ``attempts``: tries of a 5xx or a network failure; ``max_wait``: the longest ``Retry-After`` waited
    for (a longer one fails the source, saying when to try again)."""

    def __init__(self, http: httpx.AsyncClient, *, part: str, fix: str, headers: dict[str, str] | None = None,
                 auth: httpx.Auth | None = None, attempts: int = 3, rate_attempts: int = 6, max_wait: float = 60.0,
                 backoff: float = 0.5, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.http = http
        self.part = part
        self.fix = fix
        self.headers = headers or {}
        self.auth = auth
        self.attempts = attempts
        self.rate_attempts = rate_attempts
        self.max_wait = max_wait
        self.backoff = backoff
        self.sleep = sleep
        self.waited = 0.0  # seconds spent honouring Retry-After (tests read it)

    def fail(self, url: str, what: str, *, missing: bool = False, fix: str = "") -> SourceUnavailable:
        return SourceUnavailable(f"{self.part}: GET {shown(url)}: {what} — {fix or self.fix}", missing=missing)

    async def get(self, url: str, params: dict[str, Any] | None = None,
                  not_found: str = "") -> httpx.Response:
        """The 2xx answer to ``GET url``; :class:`SourceUnavailable` otherwise (``not_found``: the fix for a 404,
        which then means the source does not exist)."""
        failures = limited = 0
        while True:
            try:
                response = await self.http.get(url, params=params, headers=self.headers,
                                               auth=self.auth or httpx.USE_CLIENT_DEFAULT)
            except httpx.TransportError as exc:
                failures += 1
                if failures >= self.attempts:
                    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else f"cannot connect ({type(exc).__name__})"
                    raise self.fail(url, f"{kind}, {failures} tries") from None
                await self.sleep(self.backoff * 2 ** (failures - 1))
                continue
            status = response.status_code
            if 200 <= status < 300:
                return response
            if status == 429:
                limited += 1
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                wait = self.backoff * 2 ** limited if wait is None else wait
                if wait > self.max_wait or limited >= self.rate_attempts:
                    raise self.fail(url, f"rate limited (HTTP 429, Retry-After {wait:.0f} s, {limited} tries)",
                                    fix="run the same kb command again later; the platform's rate limit applies "
                                        "to the token's user")
                self.waited += wait
                await self.sleep(wait)
                continue
            if status >= 500:
                failures += 1
                if failures >= self.attempts:
                    raise self.fail(url, f"HTTP {status} ({failures} tries)")
                await self.sleep(self.backoff * 2 ** (failures - 1))
                continue
            if status == 404 and not_found:
                raise self.fail(url, "HTTP 404: not found", missing=True, fix=not_found)
            if status in (401, 403):
                raise self.fail(url, f"HTTP {status}: the platform refused the credentials", fix=self.fix_auth)
            if 300 <= status < 400:
                raise self.fail(url, f"HTTP {status}: redirected to {shown(response.headers.get('location', '?'))}"
                                     " (not followed)", fix="set the base URL to the address it redirects to")
            raise self.fail(url, f"HTTP {status}")

    fix_auth = "check the credentials"

    async def json(self, url: str, params: dict[str, Any] | None = None, not_found: str = "") -> Any:
        response = await self.get(url, params, not_found)
        try:
            return response.json()
        except ValueError:
            raise self.fail(url, "the answer is not JSON", fix="check the base URL: it must be the platform's "
                                                               "root, not a page in front of it") from None


def _secret(env: str) -> str:
    value = os.environ.get(env, "").strip()
    if value:
        register_secret(value)
    return value


def _clean_text(text: str, names: list[str]) -> str:
    """A ticket message as it may be indexed: greetings and sign-offs dropped, e-mails, phones and names masked."""
    return redact(strip_salutations(clean(text or "")), names)


def _email_names(address: str) -> list[str]:
    """``jane.doe+x@example.com`` -> ``jane doe``: the name an address often spells."""
    local = (address or "").split("@", 1)[0].split("+", 1)[0]
    words = [w for w in re.split(r"[._\-]+", local) if len(w) >= 3 and not w.isdigit()]
    return [" ".join(words)] if words else []


# -- Chatwoot ------------------------------------------------------------------------------------------------


class _Chatwoot:
    """What every Chatwoot source needs: the account API root, and a fetcher with the user's token."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient, part: str) -> None:
        conf = settings.adapters.chatwoot  # type: ignore[attr-defined]
        self.base_url = conf.base_url.rstrip("/")
        if not self.base_url:
            raise ValueError(f"{part}: set adapters.chatwoot.base_url to your Chatwoot (https://chatwoot.example.com)")
        self.account = conf.account_id
        self.env = conf.api_token_env
        self.http = http
        self.part = part
        self.api = f"{self.base_url}/api/v1/accounts/{self.account}"

    def fetcher(self) -> Fetcher:
        """Checked only when reading (``kb remove`` needs neither the token nor the account)."""
        if not self.account:
            raise SourceUnavailable(f"{self.part}: set adapters.chatwoot.account_id to the account's number (the "
                                    f"one after /app/accounts/ in Chatwoot's URLs at {shown(self.base_url)})")
        token = _secret(self.env)
        if not token:
            raise SourceUnavailable(f"{self.part}: set the environment variable {self.env} to a Chatwoot user's "
                                    f"access token (Profile settings → Access token at {shown(self.base_url)}); the agent "
                                    "bot's token may not read articles or conversations")
        require_https(self.base_url, "adapters.chatwoot.base_url", f"the access token in {self.env}")
        fetcher = Fetcher(self.http, part=self.part, headers={"api_access_token": token},
                          fix=f"Chatwoot at {shown(self.base_url)} is failing or unreachable: check it and the network")
        fetcher.fix_auth = (f"set {self.env} to the access token of a Chatwoot user of account {self.account} "
                            "(Profile settings → Access token)")
        return fetcher


class ChatwootPortal(_Chatwoot):
    """``chatwoot-portal:<slug>``: the portal's published articles (see the module docstring)."""

    kind = CHATWOOT_PORTAL

    def __init__(self, settings: Settings, http: httpx.AsyncClient, slug: str) -> None:
        super().__init__(settings, http, f"{CHATWOOT_PORTAL}:{slug}")
        self.slug = slug
        self.location = self.part
        self.prefix = f"{self.base_url}/hc/{slug}/articles/"

    async def documents(self) -> AsyncIterator[RemoteDocument]:
        fetch = self.fetcher()
        portal = await fetch.json(f"{self.api}/portals/{self.slug}", not_found=(
            f"no Help Center portal {self.slug!r} in account {self.account}: check the slug (Help Center → "
            "portal settings) and adapters.chatwoot.account_id"))
        domain = (portal.get("custom_domain") or "").strip().rstrip("/") if isinstance(portal, dict) else ""
        public = (domain if "://" in domain else f"https://{domain}") if domain else self.base_url
        seen: set[int] = set()
        for page in range(1, MAX_PAGES + 1):
            body = await fetch.json(f"{self.api}/portals/{self.slug}/articles",
                                    {"status": "published", "page": page})
            articles = [a for a in (body.get("payload") or []) if isinstance(a, dict)] if isinstance(body, dict) \
                else []
            fresh = [a for a in articles if a.get("id") not in seen]
            if not fresh:
                return
            for article in fresh:
                seen.add(article.get("id"))
                if article.get("status") != "published":  # also when the filter is not honoured
                    continue
                slug = str(article.get("slug") or article.get("id"))
                category = article.get("category") if isinstance(article.get("category"), dict) else {}
                text = "\n\n".join(p for p in (article.get("description") or "", article.get("content") or "") if p)
                yield RemoteDocument(f"{self.prefix}{slug}", str(article.get("title") or slug), text, MARKDOWN,
                                     url=f"{public}/hc/{self.slug}/articles/{slug}",
                                     heading=str((category or {}).get("name") or ""))


class ChatwootSolved(_Chatwoot):
    """``solved-tickets:chatwoot``: resolved conversations, question and the agent's answer, scrubbed."""

    kind = SOLVED

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        super().__init__(settings, http, f"{SOLVED}:chatwoot")
        self.location = self.part
        self.prefix = f"{self.base_url}/app/accounts/{self.account}/conversations/"

    async def documents(self) -> AsyncIterator[RemoteDocument]:
        fetch = self.fetcher()
        seen: set[int] = set()
        for page in range(1, MAX_PAGES + 1):
            body = await fetch.json(f"{self.api}/conversations",
                                    {"status": "resolved", "assignee_type": "all", "page": page})
            data = body.get("data") if isinstance(body, dict) else None
            conversations = [c for c in ((data or {}).get("payload") or []) if isinstance(c, dict)]
            fresh = [c for c in conversations if c.get("id") not in seen]
            if not fresh:
                return
            for conversation in fresh:
                seen.add(conversation.get("id"))
                if conversation.get("status") != "resolved":
                    continue
                document = self._document(conversation, await self._messages(fetch, conversation["id"]))
                if document is not None:
                    yield document

    async def _messages(self, fetch: Fetcher, conversation: Any) -> list[dict[str, Any]]:
        """Every message, oldest first (``after=`` pages of 100, as Chatwoot's MessageFinder serves them)."""
        found: dict[int, dict[str, Any]] = {}
        after = 0
        for _ in range(MAX_PAGES):
            body = await fetch.json(f"{self.api}/conversations/{conversation}/messages", {"after": after})
            batch = [m for m in ((body or {}).get("payload") or []) if isinstance(m, dict) and m.get("id") is not None]
            fresh = [m for m in batch if m["id"] not in found]
            if not fresh:
                break
            for message in fresh:
                found[message["id"]] = message
            after = max(m["id"] for m in fresh)
        return sorted(found.values(), key=lambda m: (m.get("created_at") or 0, m["id"]))

    def _document(self, conversation: dict[str, Any], messages: list[dict[str, Any]]) -> RemoteDocument | None:
        public = [m for m in messages if not m.get("private") and (m.get("content") or "").strip()]
        answers = [i for i, m in enumerate(public) if m.get("message_type") == OUTGOING and m.get("sender_type") == "User"]
        if not answers:
            return None  # nobody from the team answered: nothing to learn from
        last = answers[-1]
        question = [m["content"] for m in public[:last] if m.get("message_type") == INCOMING]
        if not question:
            return None
        meta = conversation.get("meta") if isinstance(conversation.get("meta"), dict) else {}
        contact = meta.get("sender") if isinstance(meta.get("sender"), dict) else {}
        assignee = meta.get("assignee") if isinstance(meta.get("assignee"), dict) else {}
        names = [str(p.get(k) or "") for p in (contact, assignee) for k in ("name", "available_name")]
        names += [str((m.get("sender") or {}).get(k) or "") for m in messages if isinstance(m.get("sender"), dict)
                  for k in ("name", "available_name")]
        names += _email_names(str(contact.get("email") or ""))
        secrets = [str(contact.get("email") or ""), str(contact.get("phone_number") or "")]
        labels = [str(label) for label in conversation.get("labels") or []]
        attributes = conversation.get("custom_attributes") if isinstance(conversation.get("custom_attributes"),
                                                                         dict) else {}

        def scrub(text: str) -> str:
            for secret in filter(None, secrets):
                text = text.replace(secret, "[contact]")
            return _clean_text(text, names)

        topic = ", ".join([*labels, *(f"{k}: {v}" for k, v in attributes.items() if isinstance(v, str | int | float))])
        parts = [f"Question: {scrub(chr(10).join(question))}", f"Answer: {scrub(public[last]['content'])}"]
        if topic:
            parts.append(f"Product/category: {scrub(topic)}")
        number = conversation.get("id")
        shown_labels = scrub(", ".join(labels))  # the title is shown to other users in Sources footers
        title = f"Solved conversation #{number}" + (f" ({shown_labels})" if labels else "")
        return RemoteDocument(f"{self.prefix}{number}", title, "\n\n".join(parts), TEXT)


# -- django-helpdesk -------------------------------------------------------------------------------------------


class _KBPage(HTMLParser):
    """django-helpdesk's KB pages (templates ``kb_index.html``, ``kb_category_base.html``): the category links of
    the index; a category's title (its first ``h2``) and items (``collapse-{id}``: the button's title, the ``h5``
    question, the ``card-answer`` answer)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.title = ""
        self.items: dict[int, dict[str, str]] = {}
        self._in: str | None = None  # what the text goes to: "title", "item-title", "question", "answer"
        self._item: int | None = None
        self._answer_depth = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        target = values.get("data-bs-target") or ""
        if tag == "button" and target.startswith("#collapse-") and target[10:].isdigit():
            self._item = int(target[10:])
            self._begin("item-title")
        elif tag == "div" and (values.get("id") or "").startswith("collapse-") and values["id"][9:].isdigit():
            self._item = int(values["id"][9:])  # type: ignore[index]
        elif tag == "h2" and not self.title and self._in is None:
            self._begin("title")
        elif tag == "h5" and self._item is not None and self._in is None:
            self._begin("question")
        elif tag == "div" and "card-answer" in (values.get("class") or "").split() and self._item is not None:
            self._begin("answer")
            self._answer_depth = 1
        elif tag == "div" and self._in == "answer":
            self._answer_depth += 1
        elif self._in == "answer" and tag in ("p", "li", "br", "pre", "tr", "h1", "h2", "h3", "h4", "h5", "h6"):
            self._text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if (self._in, tag) in (("item-title", "button"), ("title", "h2"), ("question", "h5")):
            self._end()
        elif self._in == "answer" and tag == "div":
            self._answer_depth -= 1
            if self._answer_depth == 0:
                self._end()

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._text.append(data)

    def _begin(self, what: str) -> None:
        self._in, self._text = what, []

    def _end(self) -> None:
        text = clean("".join(self._text)) if self._in == "answer" else " ".join("".join(self._text).split())
        if self._in == "title":
            self.title = text
        elif self._item is not None:
            self.items.setdefault(self._item, {})[self._in or ""] = text
        self._in = None


class _Helpdesk:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, part: str) -> None:
        conf = settings.adapters.django_helpdesk  # type: ignore[attr-defined]
        self.conf = conf
        self.base_url = conf.base_url.rstrip("/")
        if not self.base_url:
            raise ValueError(f"{part}: set adapters.django_helpdesk.base_url to the helpdesk's site root")
        self.http = http
        self.part = part
        self.location = part

    def fix(self) -> str:
        return f"django-helpdesk at {shown(self.base_url)} is failing or unreachable: check it and the network"


class HelpdeskKB(_Helpdesk):
    """``django-helpdesk-kb``: the public knowledge base's items (see the module docstring)."""

    kind = HELPDESK_KB

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        super().__init__(settings, http, HELPDESK_KB)
        self.prefix = f"{self.base_url}/kb/"

    async def documents(self) -> AsyncIterator[RemoteDocument]:
        fetch = Fetcher(self.http, part=self.part, fix=self.fix())
        index = _KBPage()
        index.feed((await fetch.get(self.prefix, not_found=(
            "the helpdesk serves no knowledge base there: check adapters.django_helpdesk.base_url (the site "
            "root) and that HELPDESK_KB_ENABLED is on"))).text)
        path = urlsplit(self.prefix).path
        slugs = list(dict.fromkeys(m.group(1) for link in index.links
                                   if (m := re.fullmatch(re.escape(path) + r"([\w-]+)/", urlsplit(link).path))))
        for slug in slugs:
            url = f"{self.prefix}{slug}/"
            page = _KBPage()
            page.feed((await fetch.get(url)).text)
            for item_id, item in sorted(page.items.items()):
                title = item.get("item-title") or f"item {item_id}"
                text = "\n\n".join(p for p in (item.get("question", ""), item.get("answer", "")) if p)
                link = f"{url}?kbitem={item_id}"
                yield RemoteDocument(link, title, text, TEXT, url=link, heading=page.title)


class HelpdeskSolved(_Helpdesk):
    """``solved-tickets:django-helpdesk``: resolved and closed tickets with the staff answer, scrubbed."""

    kind = SOLVED

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        super().__init__(settings, http, f"{SOLVED}:django-helpdesk")
        self.prefix = f"{self.base_url}/tickets/"

    async def documents(self) -> AsyncIterator[RemoteDocument]:
        user, password = _secret(self.conf.username_env), _secret(self.conf.password_env)
        if not user or not password:
            raise SourceUnavailable(f"{self.part}: set the environment variables {self.conf.username_env} and "
                                    f"{self.conf.password_env} to a staff user of {shown(self.base_url)} (its REST API "
                                    "is staff-only)")
        require_https(self.base_url, "adapters.django_helpdesk.base_url", "the API user's password (HTTP Basic)")
        fetch = Fetcher(self.http, part=self.part, fix=self.fix(), auth=httpx.BasicAuth(user, password))
        fetch.fix_auth = (f"set {self.conf.username_env} and {self.conf.password_env} to a staff user of the "
                          "helpdesk (the REST API is staff-only)")
        for page in range(1, MAX_PAGES + 1):
            body = await fetch.json(f"{self.base_url}/api/tickets/", {"status": f"{RESOLVED},{CLOSED}", "page": page})
            for ticket in (body.get("results") or []) if isinstance(body, dict) else []:
                if isinstance(ticket, dict):
                    document = self._document(ticket)
                    if document is not None:
                        yield document
            if not isinstance(body, dict) or not body.get("next"):
                return

    def _document(self, ticket: dict[str, Any]) -> RemoteDocument | None:
        if ticket.get("status") not in (RESOLVED, CLOSED):
            return None
        followups = sorted((f for f in ticket.get("followup_set") or [] if isinstance(f, dict)),
                           key=lambda f: f.get("id") or 0)
        # the public follow-up by a staff user that resolved or closed it: a person's answer (the bot never does)
        answers = [f for f in followups if f.get("public") and f.get("user") is not None
                   and f.get("new_status") in (RESOLVED, CLOSED) and (f.get("comment") or "").strip()]
        answer = answers[-1]["comment"] if answers else ""
        question = "\n".join(p for p in (ticket.get("title") or "", ticket.get("description") or "") if p.strip())
        if not answer or not question:
            return None
        address = str(ticket.get("submitter_email") or "")
        names = _email_names(address)

        def scrub(text: str) -> str:
            return _clean_text(text.replace(address, "[contact]") if address else text, names)

        number = ticket.get("id")
        parts = [f"Question: {scrub(question)}", f"Answer: {scrub(answer)}", f"Queue: {ticket.get('queue')}"]
        return RemoteDocument(f"{self.prefix}{number}/", f"Solved ticket #{number}", "\n\n".join(parts), TEXT)


# -- the resolver -----------------------------------------------------------------------------------------------


def resolver(settings: Settings, http: httpx.AsyncClient) -> Callable[[str], RemoteSource | None]:
    """The :data:`~bot.knowledge.remote.Resolver` the ``kb`` command gives the ingester: a platform's location
    -> its source, a path -> None; ``ValueError`` (one line) for a platform location that cannot be used."""

    def resolve(location: str) -> RemoteSource | None:
        kind, _, rest = location.strip().partition(":")
        if kind == CHATWOOT_PORTAL:
            if not re.fullmatch(r"[\w-]+", rest):
                raise ValueError(f"{location!r}: name the portal's slug, e.g. {CHATWOOT_PORTAL}:help")
            return ChatwootPortal(settings, http, rest)
        if kind == HELPDESK_KB and not rest:
            return HelpdeskKB(settings, http)
        if kind == SOLVED:
            if rest == "chatwoot":
                return ChatwootSolved(settings, http)
            if rest == "django-helpdesk":
                return HelpdeskSolved(settings, http)
            raise ValueError(f"{location!r}: solved tickets come from {' or '.join(PLATFORMS)}, e.g. "
                             f"{SOLVED}:chatwoot")
        return None

    return resolve


def locations(*, chatwoot_portals: list[str] | None = None, django_helpdesk_kb: bool = False,
              solved_tickets: list[str] | None = None) -> list[str]:
    """The location strings of ``kb add``'s flags."""
    return ([f"{CHATWOOT_PORTAL}:{slug}" for slug in chatwoot_portals or []]
            + ([HELPDESK_KB] if django_helpdesk_kb else [])
            + [f"{SOLVED}:{platform}" for platform in solved_tickets or []])


__all__ = ["ChatwootPortal", "ChatwootSolved", "Fetcher", "HelpdeskKB", "HelpdeskSolved", "locations", "resolver"]
