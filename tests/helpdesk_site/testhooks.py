"""Test-only pieces of the django-helpdesk peer: seeding, and two views standing in for a customer's e-mail.

A customer of a real django-helpdesk adds to a ticket by **e-mail only** (the public ticket page can view and
close a ticket, not comment on it): the mailbox poller (``helpdesk.email.process_queue``) hands each raw
message to ``helpdesk.email.extract_email_metadata(message, queue, logger)``, which finds the ticket from the
``[<queue slug>-<id>]`` tracking id in the subject, saves a ``FollowUp(public=True, user=None)`` with the
message's attachments and sends the ``update_ticket_done`` signal, which posts the follow-up webhook
(``helpdesk/webhooks.py``). Without a tracking id the same function opens a new ticket and sends
``new_ticket_done`` instead (the new-ticket webhook). The views below build such a raw e-mail and call that very
function, so everything after the mailbox fetch is django-helpdesk's production path.

``POST /test/customer-followup/`` — JSON ``{"ticket_id": int, "comment": str,
"attachment"?: {"filename", "mime", "base64"}}`` → ``{"ticket_id", "followup_id", "message_id"}``.
``POST /test/customer-ticket/`` — JSON ``{"title", "description", "queue"?: slug (default "support"),
"submitter_email"?, "attachment"?}`` → ``{"ticket_id", "followup_id", "message_id"}``.
``POST /test/kb-item/`` — JSON ``{"category": slug, "category_title"?, "public"?, "id"?, "title"?, "question"?,
"answer"?, "enabled"?, "delete"?}`` → ``{"id", "category"}``: what staff do in the admin (django-helpdesk has no
API for its knowledge base): create or edit a category and an item (``id`` given: that item), or delete it.

django-helpdesk names e-mailed attachments ``part-<n>_<filename>`` (``process_as_attachment``); the body is
sent as quoted-printable UTF-8, as mail clients do for non-ASCII text. (A 7bit/8bit body is decoded by
django-helpdesk with ``unicode_escape``, which turns a literal backslash sequence such as ``\\n`` into a
control character: a quirk of the e-mail path, avoided here so that comments arrive as sent.)
Both views are CSRF-exempt and unauthenticated: they exist only on this test site.
"""

from __future__ import annotations

import base64
import json
import logging
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

logger = logging.getLogger("helpdesk.testhooks")

API_USER, API_PASSWORD = "bot", "bot-password"
AGENT_USER, AGENT_PASSWORD = "agent", "agent-password"
QUEUES = {"support": "Support", "billing": "Billing"}


def seed(domain: str) -> dict[str, Any]:
    """Idempotent: the site's domain (used in e-mailed links), the queues, the API superuser and a human agent."""
    from django.contrib.auth import get_user_model
    from django.contrib.sites.models import Site
    from helpdesk.models import Queue

    Site.objects.update_or_create(id=1, defaults={"domain": domain, "name": "helpdesk peer"})
    queues = {}
    for slug, title in QUEUES.items():
        queue, _ = Queue.objects.update_or_create(slug=slug, defaults={
            "title": title, "email_address": f"{slug}@example.com",
            "allow_public_submission": True, "allow_email_submission": True,
        })
        queues[slug] = queue.id
    User = get_user_model()
    users = {}
    for name, password, superuser in ((API_USER, API_PASSWORD, True), (AGENT_USER, AGENT_PASSWORD, False)):
        user, _ = User.objects.get_or_create(username=name)
        user.email = f"{name}@example.com"
        user.is_staff = True
        user.is_superuser = superuser
        user.is_active = True
        user.set_password(password)
        user.save()
        users[name] = user.id
    return {"queues": queues, "users": users}


def _email(sender: str, to: str, subject: str, body: str, attachment: dict[str, str] | None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="customer.example.com")
    message.set_content(body, cte="quoted-printable")
    if attachment:
        maintype, _, subtype = attachment.get("mime", "application/octet-stream").partition("/")
        message.add_attachment(base64.b64decode(attachment["base64"]), maintype=maintype,
                               subtype=subtype or "octet-stream", filename=attachment["filename"])
    return message


def _deliver(message: EmailMessage, queue: Any) -> JsonResponse:
    """What ``helpdesk.email.process_queue`` does with each fetched message."""
    from helpdesk.email import extract_email_metadata
    from helpdesk.models import FollowUp

    ticket = extract_email_metadata(message=message.as_string(), queue=queue, logger=logger)
    if ticket is None:
        return JsonResponse({"error": "django-helpdesk did not accept the e-mail"}, status=422)
    followup = FollowUp.objects.filter(message_id=message["Message-ID"]).order_by("-id").first()
    return JsonResponse({"ticket_id": ticket.id, "followup_id": followup.id if followup else None,
                         "message_id": message["Message-ID"]})


@csrf_exempt
@require_POST
def customer_followup(request: HttpRequest) -> JsonResponse:
    """The customer answers the ticket's e-mail: a public follow-up without a user."""
    from helpdesk.models import Ticket

    data = json.loads(request.body)
    ticket = Ticket.objects.select_related("queue").get(id=int(data["ticket_id"]))
    message = _email(ticket.submitter_email or "customer@example.com", ticket.queue.email_address,
                     f"Re: {ticket.ticket} {ticket.title}", data["comment"], data.get("attachment"))
    return _deliver(message, ticket.queue)


@csrf_exempt
@require_POST
def customer_ticket(request: HttpRequest) -> JsonResponse:
    """The customer writes to the queue's address: a new ticket (and its first public follow-up)."""
    from helpdesk.models import Queue

    data = json.loads(request.body)
    queue = Queue.objects.get(slug=data.get("queue", "support"))
    message = _email(data.get("submitter_email", "customer@example.com"), queue.email_address, data["title"],
                     data["description"], data.get("attachment"))
    return _deliver(message, queue)


@csrf_exempt
@require_POST
def kb_item(request: HttpRequest) -> JsonResponse:
    """Staff write the knowledge base in the admin: a category (created on first use) and one of its items."""
    from helpdesk.models import KBCategory, KBItem

    data = json.loads(request.body)
    if data.get("delete"):
        KBItem.objects.filter(id=int(data["id"])).delete()
        return JsonResponse({"id": int(data["id"]), "category": None})
    slug = data["category"]
    category, _ = KBCategory.objects.update_or_create(slug=slug, defaults={
        "name": data.get("category_title", slug), "title": data.get("category_title", slug),
        "description": data.get("category_description", ""), "public": data.get("public", True)})
    item = KBItem.objects.get(id=int(data["id"])) if data.get("id") else KBItem(category=category)
    for field in ("title", "question", "answer", "enabled"):
        if field in data:
            setattr(item, field, data[field])
    item.category = category
    item.last_updated = None  # KBItem.save() stamps it
    item.save()
    return JsonResponse({"id": item.id, "category": category.slug})
