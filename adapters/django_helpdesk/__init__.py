"""django-helpdesk: the assistant answers new tickets and customers' follow-ups, and hands tickets to staff.

django-helpdesk POSTs a webhook for every new ticket and every new follow-up (environment variables
``HELPDESK_NEW_TICKET_WEBHOOK_URLS`` and ``HELPDESK_FOLLOWUP_WEBHOOK_URLS`` on the helpdesk's side), unsigned,
synchronously, with a 3 s timeout: a slow receiver blocks the helpdesk, and the bot's own follow-up fires the
follow-up webhook back at the bot during the very request that creates it. So ``POST
/django-helpdesk/webhook?token=…`` checks the token (the URL carries it, or ``Authorization: Bearer`` when a
proxy adds it; it never reaches the bot's log), stores the customer's message and answers at once; the answer is written in the background through the helpdesk's REST
API (staff-only, Basic auth), as a follow-up.

Answered: every new ticket a customer filed (the web form, e-mail), and follow-ups that are public and have no
user (a customer's e-mail). Never staff's follow-ups, never the bot's own. A handoff (``/human``, a plain
request, the persona's policy, the model saying it cannot help) answers the customer politely, re-opens the
ticket (and assigns it when ``handoff_assignee`` is set) and adds an internal note saying why; while staff
have it the bot stays silent, until a staff member writes ``/bot`` as a private follow-up (or the operator API
gives it back). In agent-assist queues every draft is a private follow-up for staff, nothing public; when staff
then write a public follow-up, the newest draft before it is judged against their text (sent as is, edited,
discarded: :meth:`~bot.conversation.feedback.FeedbackDesk.draft_used`), and a ticket resolved or closed without
a public reply discards it — once per draft, however often the webhook or the sweep delivers the follow-up.

django-helpdesk posts each webhook once (``requests.post``, no retry, whatever the answer): a webhook the bot
refused (restarting: 503; its database failing: 500) or never got would lose the customer's message. So a
catch-up sweep reads the newest follow-ups through the REST API (the last page or pages, never the whole
history) at start and every ``catch_up_seconds``, and hands every follow-up newer than its high-water mark to
the same :meth:`DjangoHelpdeskAdapter.handle` as the webhook. The store drops what the webhook already stored
(event id ``followup:<id>``), so nothing is answered twice; the mark lives in the store's stash, so a restart
resumes where the last sweep stopped, and the very first sweep only sets it (old tickets are history, not
questions).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from adapters.common.urlguard import NetworkList
from bot.config import AdapterSection, IdList

if TYPE_CHECKING:
    from adapters.django_helpdesk.adapter import DjangoHelpdeskAdapter
    from bot.runtime import Runtime

PLATFORM = "django_helpdesk"
WEBHOOK_PATH = "/django-helpdesk/webhook"
REOPENED = 2
#: django-helpdesk's statuses of a ticket that is done with (a follow-up's ``new_status`` when staff close it)
RESOLVED, CLOSED = 3, 4
# django-helpdesk 2.6's default HELPDESK_VALID_EXTENSIONS: a file with another extension makes the REST call fail
# with a 500 after the follow-up itself was saved
HELPDESK_DEFAULT_EXTENSIONS = (".txt", ".asc", ".pdf", ".doc", ".docx", ".odt", ".jpg", ".png", ".eml")
#: Stash buckets (each followed by the base URL: another helpdesk has other ids): the newest follow-up id the
#: catch-up sweep has handed on, and queue id -> slug as webhooks told it (the REST API gives only the id).
MARK_BUCKET = "django_helpdesk:catch_up:"
QUEUE_BUCKET = "django_helpdesk:queues:"
CATCH_UP_PAGE = 100  # follow-ups a sweep reads per request
CATCH_UP_PAGES = 10  # pages one sweep reads back at most: a longer backlog is logged, its oldest part skipped
CATCH_UP_TURN_WAIT = 300.0  # seconds a sweep waits for a ticket's answer before it hands on the next message there


class DjangoHelpdeskSettings(AdapterSection):
    """``adapters.django_helpdesk``: answers in a django-helpdesk (2.6)."""

    secrets: ClassVar[dict[str, str]] = {
        "username_env": "the API user's name (a staff user)", "password_env": "the API user's password",
        "webhook_token_env": "the token the webhook URLs carry (?token=…)"}

    enabled: bool = False
    persona: str = "support"
    base_url: str = Field("", description="the helpdesk's site root; its REST API is under /api/")
    username_env: str = Field("HELPDESK_API_USER", description="environment variable with the API user (staff)")
    password_env: str = Field("HELPDESK_API_PASSWORD", description="environment variable with its password")
    webhook_token_env: str = Field("HELPDESK_WEBHOOK_TOKEN", description="environment variable with the webhook token")
    agent_assist_queues: IdList = Field(default_factory=list, description="queue slugs where drafts go to staff")
    handoff_assignee: int = Field(0, ge=0, description="user id a handed-off ticket is assigned to; 0 = nobody")
    integration_users: list[int] = Field(
        default_factory=list,
        description="user ids of integration accounts (a website form, a portal) that file tickets through the "
                    "REST API on customers' behalf: their public follow-ups are the customer's. Empty: a new "
                    "ticket's first follow-up counts as the customer's when its author is neither the bot, nor "
                    "the ticket's assignee, and the ticket has a submitter e-mail")
    attachment_extensions: list[str] = Field(
        default_factory=lambda: list(HELPDESK_DEFAULT_EXTENSIONS),
        description="the extensions the helpdesk accepts (its HELPDESK_VALID_EXTENSIONS); a file with another "
                    "extension goes under an accepted one of its type, a text export as <name>.txt")
    allow_private_networks: NetworkList = Field(
        default_factory=list, description="networks attachments may come from although not public (a helpdesk "
                                          "on the company network: 10.0.0.0/8); empty = public addresses only")
    catch_up_seconds: float = Field(
        60.0, ge=0,
        description="django-helpdesk sends each webhook once, never again: a follow-up whose webhook the bot "
                    "missed (down, restarting, its database failing) is found by a sweep of the newest follow-ups "
                    "through the REST API, at start and then every this many seconds, and answered once; the "
                    "first start only notes where the helpdesk is (older tickets are not answered); 0 = no sweep")


def safe_comment(text: str) -> str:
    """django-helpdesk renders follow-up comments as Django templates (``{{ … }}`` is evaluated) after wrapping
    every ``{%`` and every ``%}`` in ``verbatim`` tags: so a lone ``%}`` or ``{%`` in an answer makes the REST
    call fail with a template syntax error. A zero-width space inside each ``{{``, ``{%``, ``{#`` and ``%}`` keeps
    them literal (and invisible)."""
    return _TEMPLATE_OPENERS.sub("{\u200b", _TAG_CLOSERS.sub("%\u200b", text))


_TEMPLATE_OPENERS = re.compile(r"\{(?=[{%#])")
_TAG_CLOSERS = re.compile(r"%(?=\})")
_MARKDOWN_LINK = re.compile(r"(\[[^\]\n]*\])\((https?://[^\s()]+)\)")
_SPACED_LINK = re.compile(r"(\[[^\]\n]*\])\( (https?://[^\s()]+) \)")


def spaced_links(text: str) -> str:
    """Markdown links written ``[title]( https://… )``. django-helpdesk shows a follow-up to staff as Markdown,
    but to the customer (the public ticket page) as plain text through Django's ``urlize``, which took
    ``p.2](https://…`` of a Sources footer's ``[Manual p.2](https://…)`` for one address and linked
    ``http://p.2](https://…``: with the spaces, Markdown still makes the link and ``urlize`` links the URL
    alone."""
    return _MARKDOWN_LINK.sub(r"\1( \2 )", text)


def unspaced_links(text: str) -> str:
    """What :func:`spaced_links` changed, undone (a draft as the bot wrote it, to compare with what staff sent)."""
    return _SPACED_LINK.sub(r"\1(\2)", text)


def build(runtime: Runtime, conf: DjangoHelpdeskSettings) -> DjangoHelpdeskAdapter:
    """``serve``'s constructor (see adapters/registry.py)."""
    from adapters.django_helpdesk.adapter import DjangoHelpdeskAdapter

    return DjangoHelpdeskAdapter.build(runtime, conf)
