"""Contract tests every store passes, plus what only the SQLite file can show."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from bot.store import AnswerMeta, MemoryStore, NewFeedback, NewMessage, SQLiteStore, Store, sha256_of
from bot.types import Attachment, ConversationKey

KEY = ConversationKey("telegram", "42")
OTHER = ConversationKey("slack", "C1", "1700000000.1")


class StoreContract:
    """Subclasses provide a ``store`` fixture (opened)."""

    async def test_a_platform_event_is_stored_once(self, store: Store) -> None:
        first = await store.add_incoming(KEY, NewMessage(role="user", text="hi", event_id="u1"))
        assert first is not None
        assert await store.add_incoming(KEY, NewMessage(role="user", text="hi", event_id="u1")) is None
        assert await store.add_incoming(OTHER, NewMessage(role="user", text="hi", event_id="u1")) is not None
        assert await store.add_incoming(KEY, NewMessage(role="user", text="no event id")) is not None
        assert [m.text for m in await store.pending()] == ["hi", "hi", "no event id"]

    async def test_conversations_waiting_oldest_first_and_active_newest_first(self, store: Store) -> None:
        third = ConversationKey("web", "s3")
        for key, text in ((KEY, "first"), (OTHER, "second"), (third, "third")):
            await store.add_message(key, NewMessage(role="user", text=text))
        await store.add_message(KEY, NewMessage(role="assistant", text="answer 1"))
        assert [s.conversation.key for s in await store.list_conversations(mode="bot")] == [KEY, third, OTHER]
        await store.update_conversation(third, mode="human", handoff_at=100.0)
        await store.update_conversation(OTHER, mode="human", handoff_at=200.0)
        waiting = await store.list_conversations(mode="human")
        assert [(s.conversation.key, s.last_text) for s in waiting] == [(third, "third"), (OTHER, "second")]
        assert [s.conversation.key for s in await store.list_conversations(mode="bot")] == [KEY]
        assert len(await store.list_conversations(mode="human", limit=1)) == 1

    async def test_platform_ids_drafts_and_lookup(self, store: Store) -> None:
        mid = await store.add_message(KEY, NewMessage(role="user", text="q", platform_message_id="100",
                                                      route={"chat_type": "private"}))
        assert (await store.message(mid)).route == {"chat_type": "private"}
        await store.set_drafts(mid, ["101", "102"])
        [pending] = await store.pending()
        assert pending.drafts == ("101", "102")
        rid = await store.finish(mid, "answered", reply="a long answer", reply_platform_ids=["101", "102"])
        assert rid is not None
        assert (await store.message(mid)).drafts == ()
        reply = await store.message(rid)
        assert reply.platform_ids == ("101", "102") and reply.platform_message_id == "101"
        assert (await store.find_by_platform_id("telegram", "42", "102")).id == rid  # type: ignore[union-attr]
        assert (await store.find_by_platform_id("telegram", "42", "100")).id == mid  # type: ignore[union-attr]
        assert await store.find_by_platform_id("telegram", "43", "100") is None
        await store.forget(KEY)
        assert await store.find_by_platform_id("telegram", "42", "100") is None

    async def test_a_question_asked_while_the_last_was_answered_sees_that_answer(self, store: Store) -> None:
        q1 = await store.add_message(KEY, NewMessage(role="user", text="q1"))
        q2 = await store.add_message(KEY, NewMessage(role="user", text="q2"))  # sent before a1 was written
        await store.finish(q1, "answered", reply="a1")
        assert [m.text for m in await store.history(KEY, since=0, before=q2)] == ["q1", "a1"]

    async def test_history_can_be_read_newest_first_a_page_at_a_time(self, store: Store) -> None:
        for i in range(5):
            mid = await store.add_message(KEY, NewMessage(role="user", text=f"q{i}"))
            await store.finish(mid, "answered", reply=f"a{i}")
        last = await store.last_message_id()
        assert [m.text for m in await store.history(KEY, since=0, before=last + 1, limit=3)] == ["a3", "q4", "a4"]
        page = await store.history(KEY, since=0, before=last + 1, limit=3)
        older = await store.history(KEY, since=0, before=last + 1, limit=3, upto=page[0].id)
        assert [m.text for m in older] == ["q2", "a2", "q3"]
        assert len(await store.history(KEY, since=0, before=last + 1)) == 10

    async def test_usage_is_counted_in_windows(self, store: Store) -> None:
        await store.record_usage("telegram:1", "message", 1, 100.0)
        await store.record_usage("telegram:1", "message", 1, 150.0)
        await store.record_usage("telegram:1", "image", 3, 150.0)
        await store.record_usage("telegram:2", "message", 1, 150.0)
        assert await store.usage("telegram:1", "message", 0.0) == (2.0, 100.0)
        assert await store.usage("telegram:1", "message", 120.0) == (1.0, 150.0)
        assert await store.usage("telegram:1", "image", 0.0) == (3.0, 150.0)
        assert await store.usage("telegram:3", "message", 0.0) == (0.0, None)

    async def test_pieces_are_stashed_once_until_dropped(self, store: Store) -> None:
        await store.stash("telegram:album:1", "101", '{"photo": 1}')
        await store.stash("telegram:album:1", "102", '{"photo": 2}')
        await store.stash("telegram:album:1", "101", '{"photo": "again"}')  # a redelivered update
        await store.stash("telegram:album:2", "201", "{}")
        await store.stash("slack:x_y", "1", "{}")
        found = await store.stashed("telegram:album:")
        assert found == {"telegram:album:1": [("101", '{"photo": 1}'), ("102", '{"photo": 2}')],
                         "telegram:album:2": [("201", "{}")]}
        assert list(await store.stashed("slack:x_")) == ["slack:x_y"]
        assert await store.stashed("slack:x%") == {}
        await store.drop_stash("telegram:album:1")
        assert list(await store.stashed("telegram:")) == ["telegram:album:2"]

    async def test_a_reply_delivered_later_is_found_by_its_platform_ids(self, store: Store) -> None:
        key = ConversationKey("telegram", "42")
        question = await store.add_message(key, NewMessage(role="user", text="q", platform_message_id="7"))
        reply = await store.finish(question, "answered", reply="a long answer")
        assert reply is not None
        assert await store.find_by_platform_id("telegram", "42", "901") is None
        await store.set_platform_ids(reply, ["901", "902"])
        for pid in ("901", "902"):
            found = await store.find_by_platform_id("telegram", "42", pid)
            assert found is not None and found.id == reply, pid
        assert (await store.message(reply)).platform_ids == ("901", "902")

    async def test_dropping_the_pieces_read_keeps_a_piece_stashed_meanwhile(self, store: Store) -> None:
        await store.stash("telegram:album:3", "301", "a")
        await store.stash("telegram:album:3", "302", "b")
        read = [item for item, _ in (await store.stashed("telegram:album:3"))["telegram:album:3"]]
        await store.stash("telegram:album:3", "303", "late")  # arrives while the album is being handed over
        await store.drop_stash("telegram:album:3", read)
        assert await store.stashed("telegram:album:3") == {"telegram:album:3": [("303", "late")]}
        await store.drop_stash("telegram:album:3", ["303"])
        assert await store.stashed("telegram:album:3") == {}

    async def test_stale_stashes_are_dropped_by_age(self, store: Store, clock: list[float]) -> None:
        clock[0] = 1000.0
        await store.stash("web:file:a", "1", "old")
        await store.stash("web:file:b", "1", "old")
        await store.stash("other:c", "1", "old")
        clock[0] = 5000.0
        await store.stash("web:file:b", "2", "fresh")  # b has a fresh piece: kept whole
        await store.stash("web:file:d", "1", "fresh")
        assert await store.drop_stale_stash("web:file:", before=2000.0) == 1
        assert sorted(await store.stashed("web:file:")) == ["web:file:b", "web:file:d"]
        assert list(await store.stashed("other:")) == ["other:c"]  # another prefix: untouched

    async def test_attachment_ids_are_checked(self, store: Store) -> None:
        for bad in ("../../etc/passwd", "ABC", "a" * 63, "g" * 64, "A" * 64):
            with pytest.raises(ValueError, match="not a SHA-256"):
                await store.attachment_data(bad)

    async def test_conversation_defaults_and_updates(self, store: Store) -> None:
        conv = await store.conversation(KEY)
        assert (conv.persona, conv.language, conv.context_start) == (None, None, 0)
        await store.update_conversation(KEY, persona="tutor", language="pt")
        conv = await store.conversation(KEY)
        assert (conv.persona, conv.language) == ("tutor", "pt")

    async def test_conversations_are_numbered_per_platform_and_keep_names_and_operators(self, store: Store) -> None:
        """The inbox calls a web visitor "Visitor 2": a small number per platform, given once, never changing."""
        first, second, chat = ConversationKey("web", "v1"), ConversationKey("web", "v2"), ConversationKey("slack", "C1")
        numbers = [(await store.conversation(k)).number for k in (first, second, chat, first)]
        assert numbers == [1, 2, 1, 1]
        await store.add_message(second, NewMessage(role="user", text="hi"))
        await store.update_conversation(second, name="Ana Souza (@ana)", mode="human", handoff_at=10.0,
                                        operator="Marta", operator_at=12.0)
        conv = await store.conversation(second)
        assert (conv.name, conv.number, conv.operator, conv.operator_at) == ("Ana Souza (@ana)", 2, "Marta", 12.0)
        assert conv.operator_has_it
        assert not (await store.update_conversation(second, handoff_at=13.0)).operator_has_it  # a new handoff
        [waiting] = await store.list_conversations(mode="human")
        assert (waiting.conversation.name, waiting.conversation.number) == ("Ana Souza (@ana)", 2)
        await store.forget(second)
        assert (await store.conversation(ConversationKey("web", "v3"))).number == 3  # not given again

    async def test_a_turn_starts_answering_and_updates_its_conversation_at_once(self, store: Store) -> None:
        await store.update_conversation(KEY, persona="tutor")
        mid = await store.add_message(KEY, NewMessage(role="user", text="hola"))
        conv = await store.start_answering(mid, KEY, last_language="es")
        assert (conv.persona, conv.last_language) == ("tutor", "es")
        assert (await store.conversation(KEY)).last_language == "es"
        assert (await store.message(mid)).state == "answering"
        assert [m.id for m in await store.pending()] == [mid]  # still to be answered after a crash
        later = await store.add_message(KEY, NewMessage(role="user", text="y otra"))
        assert await store.start_answering(later, KEY) == await store.conversation(KEY)  # nothing else changes
        assert (await store.message(later)).state == "answering"
        new = await store.add_message(OTHER, NewMessage(role="user", text="first of a new conversation"))
        assert (await store.start_answering(new, OTHER, last_language="en")).last_language == "en"

    async def test_message_lifecycle_and_reply(self, store: Store) -> None:
        mid = await store.add_message(KEY, NewMessage(role="user", text="hello", sender_id="u", locale="pt-BR",
                                                      platform_message_id="p1"))
        assert [m.id for m in await store.pending()] == [mid]
        await store.set_state(mid, "answering")
        assert (await store.message(mid)).state == "answering"
        assert [m.id for m in await store.pending()] == [mid]
        rid = await store.finish(mid, "answered", reply="hi!", reply_platform_ids=["p2"])
        assert rid is not None and rid > mid
        assert await store.pending() == []
        reply = await store.message(rid)
        assert (reply.role, reply.text, reply.reply_to, reply.platform_message_id) == ("assistant", "hi!", mid, "p2")
        user = await store.message(mid)
        assert (user.state, user.locale, user.platform_message_id) == ("answered", "pt-BR", "p1")

    async def test_history_has_answered_chat_turns_of_the_context_only(self, store: Store) -> None:
        a = await store.add_message(KEY, NewMessage(role="user", text="one"))
        await store.finish(a, "answered", reply="r-one")
        b = await store.add_message(KEY, NewMessage(role="user", text="/help", kind="command"))
        await store.finish(b, "answered", reply="help text", kind="command")
        c = await store.add_message(KEY, NewMessage(role="user", text="bad"))
        await store.finish(c, "failed", reply="sorry", kind="notice", error="x")
        d = await store.add_message(OTHER, NewMessage(role="user", text="elsewhere"))
        await store.finish(d, "answered", reply="r-else")
        e = await store.add_message(KEY, NewMessage(role="user", text="two"))
        texts = [m.text for m in await store.history(KEY, since=0, before=e)]
        assert texts == ["one", "r-one"]
        assert await store.history(KEY, since=c, before=e) == []

    async def test_transcript_is_everything_of_one_conversation_newest_kept(self, store: Store) -> None:
        a = await store.add_message(KEY, NewMessage(role="user", text="one"))
        await store.finish(a, "answered", reply="r-one")
        await store.add_message(OTHER, NewMessage(role="user", text="elsewhere"))
        b = await store.add_message(KEY, NewMessage(role="user", text="/human", kind="command"))
        await store.finish(b, "answered", reply="passing you on", kind="command")
        await store.add_message(KEY, NewMessage(role="user", text="still there?", state="held"))
        await store.add_message(KEY, NewMessage(role="assistant", text="Hi, Ana here", kind="notice",
                                                state="answered", sender_name="Ana"))
        rows = await store.transcript(KEY)
        assert [m.text for m in rows] == ["one", "r-one", "/human", "passing you on", "still there?", "Hi, Ana here"]
        assert [m.state for m in rows][-2:] == ["held", "answered"] and rows[-1].sender_name == "Ana"
        assert [m.text for m in await store.transcript(KEY, limit=2)] == ["still there?", "Hi, Ana here"]
        assert [m.text for m in await store.pending()] == ["elsewhere"]  # held ones are for a person

    async def test_attachments_are_stored_once_by_sha256(self, store: Store) -> None:
        data = b"\x89PNG fake bytes"
        att = Attachment(ref="file-1", filename="a.png", mime="image/png")
        m1 = await store.add_message(KEY, NewMessage(role="user", text="", attachments=[att]))
        m2 = await store.add_message(OTHER, NewMessage(role="user", text="", attachments=[att, att]))
        sha = await store.save_attachment(m1, 0, data)
        assert sha == sha256_of(data)
        assert await store.save_attachment(m2, 1, data) == sha
        assert await store.attachment_data(sha) == data
        stored = (await store.message(m2)).attachments
        assert [a.sha256 for a in stored] == [None, sha]
        assert stored[1].filename == "a.png" and stored[1].size == len(data)

    async def test_feedback_is_stored_once_per_press_with_the_answer_and_its_meta(
            self, store: Store, clock: list[float]) -> None:
        q = await store.add_message(KEY, NewMessage(role="user", text="why?", sender_id="u7"))
        answer = await store.finish(q, "answered", reply="because")
        assert answer is not None
        await store.record_answer(answer, AnswerMeta("support", "internvl3-1b", ("manuals/pump.pdf#3",)))
        assert await store.answer_meta([answer, q]) == {answer: AnswerMeta("support", "internvl3-1b",
                                                                           ("manuals/pump.pdf#3",))}
        press = NewFeedback(answer, "down", user="u7", event_id="cb:1", persona="support", model="internvl3-1b")
        first = await store.add_feedback(press)
        assert first is not None
        assert await store.add_feedback(press) is None  # the platform redelivered the press
        assert await store.add_feedback(NewFeedback(10**9, "up", event_id="cb:2")) is None  # no such answer
        clock[0] = 5.0
        later = await store.add_feedback(NewFeedback(answer, "regenerated", value=str(q)))
        await store.set_feedback_comment(first, "wrong valve")
        rows = await store.feedback()
        assert [(f.id, f.kind, f.signal, f.comment, f.key, f.persona) for f in rows] == [
            (first, "down", "explicit", "wrong valve", KEY, "support"), (later, "regenerated", "implicit", "", KEY, "")]
        assert [f.id for f in await store.feedback(newest_first=True, limit=1)] == [later]
        assert [f.id for f in await store.feedback(since=2.0)] == [later]
        assert [f.id for f in await store.feedback(until=2.0, kinds=["down", "up"], platform="telegram",
                                                   persona="support")] == [first]
        assert await store.feedback(platform="slack") == []
        assert [m.id for m in await store.messages_by_id([answer, q, 10**9])] == [q, answer]

    async def test_feedback_is_counted_per_utc_day_and_kind(self, store: Store, clock: list[float]) -> None:
        q = await store.add_message(KEY, NewMessage(role="user", text="why?"))
        answer = await store.finish(q, "answered", reply="because")
        q2 = await store.add_message(OTHER, NewMessage(role="user", text="and?"))
        other = await store.finish(q2, "answered", reply="so")
        assert answer is not None and other is not None
        await store.record_answer(other, AnswerMeta("sales"))
        day = 86400.0
        # 2023-11-14 23:59:59 UTC, a second later the next day, then two days on
        for at, kind, on, persona in ((1700006399.0, "down", answer, ""), (1700006399.5, "up", answer, ""),
                                      (1700006400.0, "down", answer, ""), (1700006401.0, "down", other, "sales"),
                                      (1700006400.0 + 2 * day, "edited", other, "sales")):
            clock[0] = at
            await store.add_feedback(NewFeedback(on, kind, persona=persona))  # type: ignore[arg-type]
        assert await store.feedback_per_day() == [
            ("2023-11-14", "down", 1), ("2023-11-14", "up", 1), ("2023-11-15", "down", 2), ("2023-11-17", "edited", 1)]
        assert await store.feedback_per_day(since=1700006400.0, until=1700006400.0 + day, platform="slack") == [
            ("2023-11-15", "down", 1)]
        assert await store.feedback_per_day(kinds=["edited", "up"], persona="sales") == [("2023-11-17", "edited", 1)]
        assert await store.feedback_per_day(since=1700006400.0 + 3 * day) == []

    async def test_forget_takes_the_feedback_and_remembers_the_user(self, store: Store) -> None:
        q = await store.add_message(KEY, NewMessage(role="user", text="hi", sender_id="u7"))
        answer = await store.finish(q, "answered", reply="hello")
        assert answer is not None
        await store.record_answer(answer, AnswerMeta("support"))
        await store.add_feedback(NewFeedback(answer, "up", event_id="e1"))
        await store.forget(KEY)
        assert await store.feedback() == []
        assert await store.answer_meta([answer]) == {}
        assert await store.forgotten() == {("telegram", "u7")}

    async def test_forget_deletes_rows_and_unshared_files(self, store: Store) -> None:
        shared, private = b"shared-bytes", b"private-bytes"
        att = Attachment(ref="r")
        m1 = await store.add_message(KEY, NewMessage(role="user", text="mine", attachments=[att, att]))
        await store.save_attachment(m1, 0, shared)
        await store.save_attachment(m1, 1, private)
        await store.finish(m1, "answered", reply="ok")
        m2 = await store.add_message(OTHER, NewMessage(role="user", text="theirs", attachments=[att]))
        await store.save_attachment(m2, 0, shared)
        report = await store.forget(KEY)
        assert (report.conversations, report.messages) == (1, 2)
        with pytest.raises(FileNotFoundError):
            await store.attachment_data(sha256_of(private))
        assert await store.attachment_data(sha256_of(shared)) == shared
        assert await store.history(KEY, since=0, before=10**9) == []
        assert [m.text for m in await store.pending()] == ["theirs"]

    async def test_uploads_waiting_to_be_read_survive_a_purge_and_anothers_forget(
            self, store: Store, clock: list[float]) -> None:
        """An upload is stored (``save_blob``) a moment before its message, and read when the message is
        answered: deleting another conversation or a retention purge in between must not take it away; one
        nobody ever used goes after a grace period, one the deleted conversation used goes at once."""
        clock[0] = 1000.0
        waiting_upload, unused, gone_with_it = b"photo of a kettle", b"never sent", b"mine only"
        sha = await store.save_blob(waiting_upload, "image/jpeg")
        await store.add_message(OTHER, NewMessage(role="user", text="what is this?",
                                                  attachments=[Attachment(ref=f"blob:{sha}")]))
        nobody = await store.save_blob(unused)
        mine = await store.save_blob(gone_with_it)
        await store.add_message(KEY, NewMessage(role="user", text="x", attachments=[Attachment(ref=f"blob:{mine}")]))
        await store.forget(KEY)
        with pytest.raises(FileNotFoundError):
            await store.attachment_data(mine)
        assert await store.attachment_data(sha) == waiting_upload
        assert await store.attachment_data(nobody) == unused  # within the grace period: maybe its message comes
        clock[0] = 1000.0 + 2 * 3600
        await store.purge(older_than=clock[0] - 60)
        assert await store.attachment_data(sha) == waiting_upload  # its message still waits
        with pytest.raises(FileNotFoundError):
            await store.attachment_data(nobody)

    async def test_purge_keeps_recent_and_pending(self, store: Store, clock: list[float]) -> None:
        clock[0] = 1000.0
        old = await store.add_message(KEY, NewMessage(role="user", text="old"))
        await store.finish(old, "answered", reply="old reply")
        waiting = await store.add_message(KEY, NewMessage(role="user", text="still pending"))
        clock[0] = 5000.0
        new = await store.add_message(OTHER, NewMessage(role="user", text="new"))
        report = await store.purge(older_than=2000.0)
        assert report.messages == 2
        assert {m.text for m in await store.pending()} == {"still pending", "new"}
        assert (await store.message(new)).text == "new"
        assert (await store.message(waiting)).state == "received"

    async def test_last_message_id(self, store: Store) -> None:
        assert await store.last_message_id() == 0
        mid = await store.add_message(KEY, NewMessage(role="user", text="x"))
        assert await store.last_message_id() == mid


@pytest.fixture
def clock() -> list[float]:
    return [1.0]


class TestMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self, clock: list[float]) -> Store:
        s = MemoryStore(clock=lambda: clock[0])
        await s.open()
        return s


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path, clock: list[float]) -> Store:
        s = SQLiteStore(tmp_path / "bot.sqlite3", clock=lambda: clock[0])
        await s.open()
        yield s
        await s.close()

    async def test_a_turn_commits_twice_its_answer_once(self, store: SQLiteStore) -> None:
        # what a turn writes: its start (state and language) in one commit, its end (state and answer) in one
        statements: list[str] = []
        mid = await store.add_incoming(KEY, NewMessage(role="user", text="hola"))
        assert mid is not None
        store.db.conn.set_trace_callback(statements.append)
        await store.start_answering(mid, KEY, last_language="es")
        assert await store.finish(mid, "answered", reply="¡hola!") is not None
        store.db.conn.set_trace_callback(None)
        assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "UPDATE", "COMMIT",
                                                      "BEGIN", "UPDATE", "INSERT", "COMMIT"]

    async def test_a_turn_start_that_fails_changes_nothing(self, store: SQLiteStore) -> None:
        mid = await store.add_message(KEY, NewMessage(role="user", text="hola"))
        store.db.conn.execute("CREATE TRIGGER refuse BEFORE UPDATE OF state ON messages"
                              " BEGIN SELECT RAISE(ABORT, 'disk gone'); END")
        with pytest.raises(sqlite3.IntegrityError, match="disk gone"):
            await store.start_answering(mid, KEY, last_language="es")
        assert (await store.conversation(KEY)).last_language is None  # rolled back, and not kept in memory
        store.db.conn.execute("DROP TRIGGER refuse")
        await store.close()
        await store.open()
        assert (await store.conversation(KEY)).last_language is None
        assert (await store.message(mid)).state == "received"

    async def test_checkpoints_run_in_a_thread_of_their_own(self, tmp_path: Path) -> None:
        from bot.store.sqlite import CHECKPOINT_BACKSTOP_PAGES, CHECKPOINT_COMMITS

        store = SQLiteStore(tmp_path / "c.sqlite3")
        await store.open()
        threads: list[int] = []
        checkpoint = store._checkpoint

        def watched() -> None:
            threads.append(threading.get_ident())
            checkpoint()

        store._checkpoint = watched  # type: ignore[method-assign]
        for i in range(CHECKPOINT_COMMITS + 1):
            assert await store.add_incoming(KEY, NewMessage(role="user", text=f"m{i}", event_id=str(i))) is not None
        assert store._checkpointing is not None
        await asyncio.wrap_future(store._checkpointing)
        assert store.checkpoints == 1 and len(threads) == 1 and threads[0] != threading.get_ident()
        # SQLite's own checkpoint, inside a commit on the event loop, is only the backstop
        assert store.db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == CHECKPOINT_BACKSTOP_PAGES
        await store.close()
        assert not (tmp_path / "c.sqlite3-wal").exists()  # the last connection closed took the WAL away
        conn = sqlite3.connect(tmp_path / "c.sqlite3")
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == CHECKPOINT_COMMITS + 1

    async def test_wal_mode_and_named_migrations(self, tmp_path: Path) -> None:
        store = SQLiteStore(tmp_path / "x.sqlite3")
        await store.open()
        await store.close()
        conn = sqlite3.connect(tmp_path / "x.sqlite3")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == [
            "m001_initial", "m002_handoff", "m003_platform_ids_routes_usage", "m004_stash",
            "m005_waiting_conversations", "m006_conversation_names", "m007_knowledge", "m009_feedback",
            "m010_knowledge_vectors"]

    async def test_a_database_of_the_first_release_is_upgraded_in_place(self, tmp_path: Path) -> None:
        import sqlite_utils

        from bot.store.sqlite import m001_initial

        path = tmp_path / "old.sqlite3"
        db = sqlite_utils.Database(path)
        db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
        m001_initial(db)
        db["_migrations"].insert({"name": "m001_initial", "applied_at": 0.0})
        db["conversations"].insert({"id": "web:a", "platform": "web", "chat": "a", "thread": "", "persona": "tutor",
                                    "context_start": 0, "created_at": 1.0})
        db["messages"].insert({"id": 1, "conversation_id": "web:a", "role": "user", "kind": "chat", "text": "q",
                               "state": "answered", "platform_message_id": "p1", "created_at": 1.0,
                               "sender_name": "Ana"})
        db["messages"].insert({"id": 2, "conversation_id": "web:a", "role": "assistant", "kind": "chat", "text": "a",
                               "state": "answered", "platform_message_id": "p2", "reply_to": 1, "created_at": 1.0})
        db.conn.close()
        store = SQLiteStore(path)
        await store.open()
        try:
            conv = await store.conversation(ConversationKey("web", "a"))
            assert (conv.persona, conv.mode, conv.handoff_at) == ("tutor", "bot", None)
            # numbered, and named after the user's newest message, by the migration
            assert (conv.number, conv.name) == (1, "Ana")
            assert (await store.conversation(ConversationKey("web", "b"))).number == 2
            await store.update_conversation(conv.key, mode="human", handoff_at=5.0)
            # replies of the first release are found by their platform ids
            assert (await store.find_by_platform_id("web", "a", "p2")).platform_ids == ("p2",)  # type: ignore[union-attr]
            assert (await store.find_by_platform_id("web", "a", "p1")).id == 1  # type: ignore[union-attr]
        finally:
            await store.close()
        store = SQLiteStore(path)
        await store.open()
        try:
            conv = await store.conversation(ConversationKey("web", "a"))
            assert (conv.mode, conv.handoff_at) == ("human", 5.0)
            await store.check()
        finally:
            await store.close()

    async def test_everything_survives_reopening(self, tmp_path: Path) -> None:
        path = tmp_path / "bot.sqlite3"
        first = SQLiteStore(path)
        await first.open()
        await first.update_conversation(KEY, persona="support", context_start=7, name="Ana", operator="Marta",
                                        operator_at=3.0)
        mid = await first.add_message(KEY, NewMessage(role="user", text="kept", attachments=[Attachment("r", "f.jpg")]))
        sha = await first.save_attachment(mid, 0, b"jpeg-ish")
        await first.close()
        again = SQLiteStore(path)
        await again.open()
        conv = await again.conversation(KEY)
        assert (conv.persona, conv.context_start) == ("support", 7)
        assert (conv.name, conv.number, conv.operator, conv.operator_at) == ("Ana", 1, "Marta", 3.0)
        [pending] = await again.pending()
        assert pending.text == "kept" and pending.attachments[0].sha256 == sha
        assert await again.attachment_data(sha) == b"jpeg-ish"
        await again.close()

    async def test_a_message_that_cannot_be_stored_leaves_its_event_unremembered(self, store: SQLiteStore) -> None:
        """Remembering the event and storing the message are one transaction: a crash between them cannot
        turn the platform's retry into a "duplicate" of a message that was never stored."""

        def broken(*args: object) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        original = store._insert_message
        store._insert_message = broken  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            await store.add_incoming(KEY, NewMessage(role="user", text="lost?", event_id="upd-7"))
        store._insert_message = original  # type: ignore[method-assign]
        assert await store.add_incoming(KEY, NewMessage(role="user", text="retried", event_id="upd-7")) is not None
        assert [m.text for m in await store.pending()] == ["retried"]

    async def test_forget_removes_the_file_from_disk(self, tmp_path: Path) -> None:
        store = SQLiteStore(tmp_path / "bot.sqlite3", tmp_path / "files")
        await store.open()
        mid = await store.add_message(KEY, NewMessage(role="user", text="x", attachments=[Attachment("r")]))
        sha = await store.save_attachment(mid, 0, b"secret photo")
        files = list((tmp_path / "files").rglob(sha))
        assert len(files) == 1
        report = await store.forget(KEY)
        assert report.attachment_files == 1
        assert not files[0].exists()
        conn = sqlite3.connect(tmp_path / "bot.sqlite3")
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM attachments").fetchone()[0] == 0
        await store.close()


class TestPostgresStore(StoreContract):
    """The same contract on a real PostgreSQL 15 (tests/postgres_cluster.py), a fresh database per test."""

    @pytest.fixture
    async def store(self, postgres: Any, clock: list[float]) -> Store:
        from bot.store.postgres.store import PostgresStore

        s = PostgresStore(postgres.database(), clock=lambda: clock[0])
        await s.open()
        yield s
        await s.close()


async def test_replicas_starting_at_once_migrate_once(postgres: Any) -> None:
    from bot.store.postgres.store import MIGRATIONS, PostgresStore

    url = postgres.database()
    stores = [PostgresStore(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        names = postgres.psql("SELECT name FROM _migrations ORDER BY name", url.rsplit("/", 1)[1]).split()
        assert names == [name for name, _ in MIGRATIONS]
        mid = await stores[0].add_message(KEY, NewMessage(role="user", text="seen by all"))
        assert [(await s.message(mid)).text for s in stores] == ["seen by all"] * 4
    finally:
        await asyncio.gather(*(s.close() for s in stores))
