"""The in-memory implementations of the core's seams pass the contracts every implementation passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.console import FileFetcher
from bot.seams import AccessPolicy
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import Attachment, ConversationKey, IncomingMessage, Sender, SinkContext, platform_ids
from tests.contracts import FetcherContract, FileSource, Screen, SinkContract


class TestCollectingSink(SinkContract):
    @pytest.fixture
    def screen(self) -> Screen:
        sinks: list[CollectingSink] = []

        def make(context: SinkContext) -> CollectingSink:
            sinks.append(CollectingSink())
            return sinks[-1]

        async def visible() -> list[str]:
            return [text for sink in sinks for text in sink.texts]

        async def files() -> list[str]:
            return [f.filename for sink in sinks for f in sink.files]

        return Screen(make, visible, files)


class TestMemoryFetcher(FetcherContract):
    @pytest.fixture
    def files(self) -> FileSource:
        fetcher = MemoryFetcher()

        async def add(data: bytes, name: str) -> tuple[MemoryFetcher, Attachment]:
            return fetcher, fetcher.add(data, name)

        async def missing() -> tuple[MemoryFetcher, Attachment]:
            return fetcher, Attachment(ref="mem:gone", filename="gone.jpg")

        return FileSource(add, missing)


class TestFileFetcher(FetcherContract):
    @pytest.fixture
    def files(self, tmp_path: Path) -> FileSource:
        async def add(data: bytes, name: str) -> tuple[FileFetcher, Attachment]:
            path = tmp_path / name
            path.write_bytes(data)
            return FileFetcher(), Attachment(ref=str(path), filename=name)

        async def missing() -> tuple[FileFetcher, Attachment]:
            return FileFetcher(), Attachment(ref=str(tmp_path / "nope.jpg"), filename="nope.jpg")

        return FileSource(add, missing)


def test_platform_ids_normalise() -> None:
    assert platform_ids(None) == ()
    assert platform_ids("") == ()
    assert platform_ids("12") == ("12",)
    assert platform_ids(["1", "", "2"]) == ("1", "2")


def _message(user: str, chat: str, team: str = "") -> IncomingMessage:
    return IncomingMessage(ConversationKey("slack", chat), Sender(user), "hi", route={"team": team} if team else {})


def test_access_policy_allow_and_deny_lists() -> None:
    everyone = AccessPolicy()
    assert everyone.admits(_message("U1", "C1"))
    policy = AccessPolicy(allow_users=frozenset({"U1", "U2"}), deny_users=frozenset({"U2"}))
    assert policy.admits(_message("U1", "C1"))
    assert not policy.admits(_message("U2", "C1"))  # deny wins
    assert not policy.admits(_message("U3", "C1"))
    by_team = AccessPolicy(allow_chats=frozenset({"T1"}))
    assert by_team.admits(_message("U9", "C7", team="T1"))
    assert not by_team.admits(_message("U9", "C7", team="T2"))
    assert not AccessPolicy(deny_chats=frozenset({"C7"})).admits(_message("U1", "C7"))
