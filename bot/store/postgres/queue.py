"""The queries the claim scheduler (``claims``) runs on the PostgreSQL store: which messages wait, who
holds a conversation, leases. A part of :class:`~bot.store.postgres.store.PostgresStore` (a mixin, so the
store's class stays readable), public so the scheduler never reaches into the store's private helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.store.base import StoredMessage
from bot.types import ConversationKey

#: the database's clock, for leases (replicas' clocks may disagree)
NOW = "extract(epoch from clock_timestamp())"

_WAITING = ("SELECT id, conversation_id, role, kind, text, state, sender_id, sender_name, locale, platform_message_id,"
            " reply_to, error, created_at, platform_ids, drafts, route FROM messages WHERE conversation_id = %s"
            " AND role = 'user' AND state IN ('received', 'answering') ORDER BY id")


class ClaimQueries:
    """See the module docstring."""

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        raise NotImplementedError

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise NotImplementedError

    async def _messages(self, sql: str, params: Sequence[Any] = ()) -> list[StoredMessage]:
        raise NotImplementedError

    async def count_waiting(self, key: ConversationKey, besides: int) -> int:
        """Messages of ``key`` waiting or being answered on any replica, ``besides`` aside."""
        row = await self._one("SELECT count(*) FROM messages WHERE conversation_id = %s AND role = 'user'"
                              " AND state IN ('received', 'answering') AND id <> %s", (str(key), besides))
        return int(row[0]) if row else 0

    async def any_waiting(self) -> bool:
        """Does any message wait or is being answered, anywhere?"""
        row = await self._one("SELECT EXISTS (SELECT 1 FROM messages WHERE role = 'user'"
                              " AND state IN ('received', 'answering'))")
        return bool(row and row[0])

    async def waiting_messages(self, key: ConversationKey, *, limit: int | None = None) -> list[StoredMessage]:
        """The user messages of ``key`` waiting or being answered, oldest first."""
        return await self._messages(_WAITING + (" LIMIT %s" if limit else ""),
                                    (str(key), limit) if limit else (str(key),))

    async def message_states(self, ids: Sequence[int]) -> dict[int, str]:
        """The state of each message of ``ids`` still in the store."""
        return {int(i): str(s) for i, s in await self._rows("SELECT id, state FROM messages WHERE id = ANY(%s)",
                                                            (list(ids),))}

    async def claim(self, *, limit: int, replica: str, token: int, lease: float,
                    platforms: Sequence[str] | None) -> list[tuple[str, bool]]:
        """Claim up to ``limit`` conversations with waiting messages that nobody holds (of ``platforms``),
        fairly between users: each user's oldest waiting conversation comes before anyone's second, and a
        user whose conversations are being answered (on any replica) waits behind those who have none.
        Returns each claimed conversation and whether another replica's lease on it had expired."""
        plats = list(platforms) if platforms is not None else None
        rows = await self._rows(
            "WITH waiting AS (SELECT DISTINCT ON (conversation_id) conversation_id, id AS first, sender_id"
            " FROM messages WHERE role = 'user' AND state IN ('received', 'answering')"
            " AND (%s::text[] IS NULL OR split_part(conversation_id, ':', 1) = ANY(%s::text[]))"
            " ORDER BY conversation_id, id),"
            " busy AS (SELECT w.sender_id, count(*) AS n FROM waiting w JOIN claims k ON"
            f" k.conversation_id = w.conversation_id AND k.lease_until >= {NOW} GROUP BY w.sender_id),"
            " free AS (SELECT w.conversation_id, w.first, k.replica AS previous, row_number() OVER (PARTITION BY"
            " w.sender_id ORDER BY w.first) + COALESCE(b.n, 0) AS turn FROM waiting w"
            " LEFT JOIN claims k ON k.conversation_id = w.conversation_id"
            " LEFT JOIN busy b ON b.sender_id IS NOT DISTINCT FROM w.sender_id"
            f" WHERE k.conversation_id IS NULL OR k.lease_until < {NOW} ORDER BY turn, w.first LIMIT %s)"
            f" INSERT INTO claims (conversation_id, replica, token, lease_until) SELECT conversation_id, %s, %s,"
            f" {NOW} + %s FROM free ON CONFLICT (conversation_id) DO UPDATE SET replica = excluded.replica,"
            f" token = excluded.token, lease_until = excluded.lease_until WHERE claims.lease_until < {NOW}"
            " RETURNING conversation_id, (SELECT previous FROM free f WHERE f.conversation_id ="
            " claims.conversation_id) IS NOT NULL",
            (plats, plats, limit, replica, token, lease))
        return [(str(cid), bool(expired)) for cid, expired in rows]

    async def renew_claim(self, key: ConversationKey, token: int, lease: float) -> bool:
        """Extend this replica's lease on ``key``; False when the claim is no longer its own."""
        renewed = await self._run(f"UPDATE claims SET lease_until = {NOW} + %s WHERE conversation_id = %s"
                                  " AND token = %s", (lease, str(key), token))
        return renewed == 1

    async def release_claim(self, key: ConversationKey, token: int) -> None:
        await self._run("DELETE FROM claims WHERE conversation_id = %s AND token = %s", (str(key), token))


__all__ = ["NOW", "ClaimQueries"]
