"""django-helpdesk's catch-up sweep: django-helpdesk posts each webhook once, so a follow-up whose webhook the
bot missed (down, restarting, its database failing) is found by reading the newest follow-ups through the REST
API, at start and every ``catch_up_seconds``, and handed to the adapter as its webhook would have been (see
adapters/django_helpdesk/__init__.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from adapters.common.http import BadRequest
from bot.errors import ShuttingDown, describe
from bot.ops.checks import shown as shown_url
from bot.store import is_store_error

if TYPE_CHECKING:
    from bot.conversation.manager import Receipt

from adapters.django_helpdesk import CATCH_UP_PAGE, CATCH_UP_PAGES, CATCH_UP_TURN_WAIT, CLOSED, RESOLVED

if TYPE_CHECKING:
    from adapters.django_helpdesk.adapter import DjangoHelpdeskAdapter

log = logging.getLogger("adapters.django_helpdesk")  # one logger name for the whole adapter
T = TypeVar("T")


class CatchUp:
    """The sweeps of one adapter: one at a time; ``sweeps`` counts those finished (tests wait on it)."""

    def __init__(self, adapter: DjangoHelpdeskAdapter) -> None:
        self.adapter = adapter
        self._lock = asyncio.Lock()
        self._queues_loaded = False
        self.sweeps = 0

    async def loop(self) -> None:
        while self.adapter.accepting:
            await self.catch_up()
            self.sweeps += 1
            await asyncio.sleep(self.adapter.conf.catch_up_seconds)

    async def catch_up(self) -> int:
        """One sweep: the follow-ups newer than the high-water mark, each handed to :meth:`handle` as its webhook
        would have been, in order; the mark moves past each one handled. Returns how many were handed on. A
        failure is one log line (what, where, the fix) and ends the sweep where it stood: the next one goes on
        from there. Never raises (but a cancel)."""
        async with self._lock:
            try:
                return await self._sweep()
            except _SweepFailed as failed:
                if isinstance(failed.error, ShuttingDown):
                    return 0  # stopping: the next start goes on from the mark
                log.warning("django-helpdesk catch-up: %s failed (%s): %s", failed.part, describe_failure(failed.error),
                            self._fix(failed.error))
            except Exception as exc:  # the sweep never stops the adapter: one line, the next sweep tries again
                log.error("django-helpdesk catch-up failed (%s): %s", describe_failure(exc), self._fix(exc))
            return 0

    async def _sweep(self) -> int:
        store = self.adapter.manager.store
        items = (await _step("reading the high-water mark from the store", store.stashed(self.adapter.mark_bucket))
                 ).get(self.adapter.mark_bucket, [])
        mark = max((int(item) for item, _ in items if item.isdigit()), default=None)
        if not self._queues_loaded:
            known = await _step("reading the queues' slugs from the store", store.stashed(self.adapter.queue_bucket))
            for item, slug in known.get(self.adapter.queue_bucket, []):
                if item.isdigit():
                    self.adapter.queues.setdefault(int(item), slug)
            self._queues_loaded = True
        followups = await self._newest(mark)
        newest = max((f["id"] for f in followups), default=0)
        if mark is None:  # the first sweep ever: from here on (the helpdesk's past is not a question to us)
            await self._move_mark(newest, items)
            log.info("django-helpdesk catch-up starts after follow-up %d (older ones are not answered)", newest)
            return 0
        if newest < mark:  # ids are never reused: another database behind the same base_url
            log.warning("django-helpdesk catch-up: the newest follow-up (%d) is older than where the last sweep "
                        "stopped (%d): a new helpdesk database? Going on after %d", newest, mark, newest)
            await self._move_mark(newest, items)
            return 0
        handed, start = 0, mark
        failed: _SweepFailed | None = None
        tickets: dict[int, dict[str, Any] | None] = {}
        turns: dict[int, Receipt] = {}  # ticket id -> the turn this sweep started there last
        for followup in sorted((f for f in followups if f["id"] > mark), key=lambda f: f["id"]):
            if not self.adapter.accepting:
                break
            try:
                if self._maybe_customers(followup):
                    handed += await self._hand_on(followup, tickets, turns)
            except _SweepFailed as exc:
                failed = exc
                break
            mark = followup["id"]
        if mark != start:
            await self._move_mark(mark, items)
        if failed is not None:
            raise failed
        return handed

    async def _newest(self, mark: int | None) -> list[dict[str, Any]]:
        """The last page of follow-ups (oldest first), and earlier pages until one reaches back to ``mark``."""
        url = f"{self.adapter.base_url}/api/followups/"
        page = await self._get(url, {"page": "last", "page_size": CATCH_UP_PAGE})
        found = _followups(page)
        number = max(1, -(-int(page.get("count") or 0) // CATCH_UP_PAGE))
        last = number
        while mark is not None and number > 1 and all(f["id"] > mark for f in found):
            if last - number + 1 >= CATCH_UP_PAGES:
                log.warning("django-helpdesk catch-up: more than %d follow-ups since follow-up %d; only the newest "
                            "are looked at (the bot was away long: read the older tickets yourself)",
                            CATCH_UP_PAGE * CATCH_UP_PAGES, mark)
                break
            number -= 1
            found = _followups(await self._get(url, {"page": number, "page_size": CATCH_UP_PAGE})) + found
        return found

    def _maybe_customers(self, followup: dict[str, Any]) -> bool:
        """Could :meth:`handle` answer this follow-up, or judge a draft with it? (Saves reading the ticket of
        every staff note.)"""
        author = followup.get("user")
        staff = author is not None and author != self.adapter.bot_user
        if self.adapter.assist and staff and (followup.get("public") or followup.get("new_status") in (RESOLVED, CLOSED)):
            return True  # staff's reply to, or closing of, what may be an agent-assist ticket
        if not followup.get("public", True):
            return False  # private: never the customer's (and a staff /bot is not replayed)
        if author is None:
            return True
        if author == self.adapter.bot_user:
            return False
        return author in self.adapter.conf.integration_users if self.adapter.conf.integration_users else True

    async def _hand_on(self, followup: dict[str, Any], tickets: dict[int, dict[str, Any] | None],
                       turns: dict[int, Receipt]) -> int:
        ticket_id = followup["ticket"]
        if ticket_id not in tickets:
            try:
                tickets[ticket_id] = await self._get(f"{self.adapter.base_url}/api/tickets/{ticket_id}/", {})
            except _SweepFailed as failed:
                if not (isinstance(failed.error, httpx.HTTPStatusError) and failed.error.response.status_code == 404):
                    raise
                tickets[ticket_id] = None  # deleted since (or out of the API user's reach)
        ticket = tickets[ticket_id]
        if ticket is None:
            return 0
        first = next((f.get("id") for f in ticket.get("followup_set") or [] if isinstance(f, dict)), None)
        queue = ticket.get("queue")
        data: dict[str, Any] = {"ticket": ticket, "queue_slug": self.adapter.queues.get(queue, "") if isinstance(queue, int)
                                else ""}
        if first != followup["id"]:
            data["followup_id"] = followup["id"]
        if ticket_id in turns:
            # the customer wrote these one after the other, not at once: each waits for the answer before it (as
            # its webhook would have), else the next would meet conversation.max_pending_per_conversation
            await asyncio.wait([turns.pop(ticket_id).done], timeout=CATCH_UP_TURN_WAIT)
        try:
            outcome, turn = await self.adapter.handle_turn(data, catch_up=True)
        except BadRequest as exc:
            log.warning("django-helpdesk catch-up: follow-up %d skipped (%s)", followup["id"], exc.detail)
            return 0
        except Exception as exc:
            raise _SweepFailed(f"storing follow-up {followup['id']} of ticket {ticket_id}", exc) from None
        log.debug("django-helpdesk catch-up, follow-up %d: %s", followup["id"], outcome)
        if turn is None:
            return 0
        turns[ticket_id] = turn
        return 1

    async def _get(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            response = await self.adapter.http.get(url, params=params, auth=self.adapter.auth)
            response.raise_for_status()
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("the answer is not a JSON object")
            return body

        shown = shown_url(url) + (f"?{httpx.QueryParams(params)}" if params else "")
        return await _step(f"GET {shown}", get())

    async def _move_mark(self, mark: int, old: list[tuple[str, str]]) -> None:
        """The new mark first, then the old ones go (a crash between leaves both: the higher one counts)."""
        store = self.adapter.manager.store
        await _step("saving the high-water mark in the store", store.stash(self.adapter.mark_bucket, f"{mark:012d}", ""))
        stale = [item for item, _ in old if item != f"{mark:012d}"]
        if stale:
            await _step("saving the high-water mark in the store", store.drop_stash(self.adapter.mark_bucket, stale))

    def _fix(self, error: BaseException) -> str:
        again = f"tried again in {self.adapter.conf.catch_up_seconds:g} s"
        if isinstance(error, httpx.HTTPStatusError):
            status = error.response.status_code
            if status in (401, 403):
                return (f"the helpdesk refuses the API user: set {self.adapter.conf.username_env} and {self.adapter.conf.password_env} "
                        f"to a staff user's name and password ({again})")
            if status == 404:
                return f"no REST API there: check adapters.django_helpdesk.base_url (the site root) ({again})"
            return f"the helpdesk answered HTTP {status}; {again}"
        if isinstance(error, httpx.HTTPError):
            return f"the helpdesk cannot be reached: check adapters.django_helpdesk.base_url and the network; {again}"
        if isinstance(error, ShuttingDown):
            return "the bot is stopping"
        if is_store_error(error):
            return f"the bot's database failed; {again}"
        return f"unexpected: please report it; {again}"


class _SweepFailed(Exception):
    """A step of the catch-up sweep failed: ``part`` says which (and the URL)."""

    def __init__(self, part: str, error: BaseException) -> None:
        super().__init__(part)
        self.part = part
        self.error = error


async def _step(part: str, work: Awaitable[T]) -> T:
    """``await work``, any failure but a cancel raised as :class:`_SweepFailed` naming ``part``."""
    try:
        return await work
    except _SweepFailed:
        raise
    except Exception as exc:
        raise _SweepFailed(part, exc) from None


def _followups(page: dict[str, Any]) -> list[dict[str, Any]]:
    results = page.get("results")
    return [f for f in results if isinstance(f, dict) and isinstance(f.get("id"), int)
            and isinstance(f.get("ticket"), int)] if isinstance(results, list) else []


def describe_failure(exc: BaseException) -> str:
    """:func:`bot.errors.describe`, with an HTTP error as its status only (its text repeats the URL)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{type(exc).__name__}: HTTP {exc.response.status_code}"
    return describe(exc)
