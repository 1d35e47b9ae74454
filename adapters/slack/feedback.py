"""Presses of the 👍/👎 buttons under Slack answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError

from adapters.slack.transport import FEEDBACK_ACTION, FEEDBACK_VALUES, PLATFORM, slack_error
from bot.l10n import i18n
from bot.types import ConversationKey

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter

log = logging.getLogger(__name__)


async def on_feedback(adapter: SlackAdapter, ack: Callable[..., Awaitable[None]], body: dict[str, Any]) -> None:
    """👍/👎 under an answer: recorded once through the core (Slack's ``action_ts`` and the presser are
    the event id: a redelivered press is the same row), thanked with an ephemeral message; a 👎 asks once
    what was wrong (the presser's next message in the thread is its comment)."""
    await ack()
    action = next((a for a in body.get("actions") or [] if a.get("action_id") == FEEDBACK_ACTION), None)
    container = body.get("container") or {}
    channel = str(container.get("channel_id") or (body.get("channel") or {}).get("id") or "")
    ts, user = str(container.get("message_ts") or ""), str((body.get("user") or {}).get("id") or "")
    if action is None or not channel or not ts or not user:
        return
    rating = {v: k for k, v in FEEDBACK_VALUES.items()}.get(str(action.get("value")))
    if rating is None:
        return
    thread = str(container.get("thread_ts") or "")
    key = ConversationKey(PLATFORM, channel, thread)
    conv = await adapter.manager.store.conversation(key)
    lang = conv.language or conv.last_language or i18n.normalize_code(await adapter.locale(user)) \
        or adapter.settings.conversation.default_language
    feedback = adapter.manager.feedback
    answer = await feedback.answer_for(key, ts)
    if answer is None:
        says = "feedback_gone"
    else:
        fid = await feedback.record(answer, "up" if rating == "up" else "down", user=user,
                                    event_id=f"slack-fb:{user}:{action.get('action_ts') or ts}")
        says = "feedback_thanks"
        if fid is not None and rating == "down":
            await feedback.ask_comment(answer.key, user, fid)
            says = "feedback_ask_comment"
    try:
        await adapter.call(adapter.client.chat_postEphemeral, channel=channel, user=user,
                        thread_ts=thread or None, text=i18n.text(says, lang))
    except SlackApiError as exc:
        log.info("thanking %s for feedback failed: %s", user, slack_error(exc) or exc)
