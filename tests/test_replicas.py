"""Several replicas on one PostgreSQL database: events between them, and (multi-process) the whole service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.common.bus import Bus

pytestmark = pytest.mark.timeout(300)


async def test_events_reach_every_replica_in_order_whatever_their_size(postgres: Any) -> None:
    from bot.store.postgres import PostgresStore

    url = postgres.database()
    stores = [PostgresStore(url), PostgresStore(url)]
    for store in stores:
        await store.open()
    try:
        seen: list[list[dict[str, Any]]] = [[], []]
        got_all = asyncio.Event()

        def receiver(i: int) -> Any:
            def deliver(event: dict[str, Any]) -> None:
                seen[i].append(event)
                if all(len(s) == 4 for s in seen):
                    got_all.set()
            return deliver

        buses = [Bus(store, "test_bus", receiver(i)) for i, store in enumerate(stores)]
        for bus in buses:
            assert bus.shared
            await bus.start()
        big = "déjà vu 日本語 " * 3000  # ~50 kB of UTF-8: many parts, each under NOTIFY's 8,000 bytes
        sent = [{"n": 1, "text": "short"}, {"n": 2, "text": big}, {"n": 3, "text": ""}, {"n": 4, "text": big[:7999]}]
        await buses[0].publish(sent[0])
        await buses[0].publish(sent[1])
        await buses[1].publish(sent[2])
        await buses[1].publish(sent[3])
        # a stranger's notification on the channel is ignored, not fatal
        await stores[0].notify("test_bus", ["not the bus format", "x:9:2:out of range"])
        await asyncio.wait_for(got_all.wait(), 30)
        assert seen[0] == seen[1]
        assert sorted(seen[0], key=lambda e: e["n"]) == sent
        # a replica's own events keep their order
        mine = [e["n"] for e in seen[1] if e["n"] in (1, 2)]
        assert mine == [1, 2]
    finally:
        for store in stores:
            await store.close()


async def test_without_a_shared_store_events_are_handed_over_directly() -> None:
    got: list[dict[str, Any]] = []
    bus = Bus(object(), "local", got.append)
    await bus.start()
    await bus.publish({"a": 1})
    assert not bus.shared and got == [{"a": 1}]


async def test_one_replica_leads_at_a_time_and_another_takes_over(postgres: Any) -> None:
    from bot.store.postgres import PostgresStore

    url = postgres.database()
    stores = [PostgresStore(url), PostgresStore(url)]
    for store in stores:
        await store.open()
    leading: list[int] = []
    overlaps: list[list[int]] = []
    changed = asyncio.Event()

    def lead(i: int) -> Any:
        async def run() -> None:
            if leading:
                overlaps.append([*leading, i])
            leading.append(i)
            changed.set()
            try:
                await asyncio.Event().wait()
            finally:
                leading.remove(i)
                changed.set()
        return run

    async def until(condition: Any) -> None:
        async with asyncio.timeout(15):
            while not condition():
                changed.clear()
                await changed.wait()

    tasks = {0: stores[0].elect("test leader", lead(0), retry=0.2)}
    try:
        await until(lambda: leading == [0])
        tasks[1] = stores[1].elect("test leader", lead(1), retry=0.2)
        await asyncio.sleep(1)  # several tries of the second replica: the lock is held
        assert leading == [0]
        # the leader's database connection dies: it notices and stops leading; someone leads again
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                      " AND granted", url.rsplit("/", 1)[1])
        await until(lambda: leading == [1])
        # the leader stops (a replica shut down, or killed: its connection closes): the other takes over
        tasks.pop(1).cancel()
        await until(lambda: leading == [0])
        assert overlaps == []
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for store in stores:
            await store.close()
    assert leading == []
