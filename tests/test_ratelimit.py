"""The rate limiter platform adapters put their calls through."""

from __future__ import annotations

import asyncio

import pytest

from adapters.common.ratelimit import RateLimiter


class TooMany(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after}")
        self.retry_after = retry_after


def _retry_after(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, TooMany) else None


async def test_a_busy_chat_waits_while_other_chats_go_on() -> None:
    limiter = RateLimiter(lambda key: [(1, 3600)])
    await limiter.acquire("chat-a")
    second = asyncio.create_task(limiter.acquire("chat-a"))
    await limiter.acquire("chat-b")  # another chat is not held up
    await asyncio.sleep(0)
    assert not second.done()
    second.cancel()


async def test_groups_can_have_stricter_rates_than_private_chats() -> None:
    limiter = RateLimiter(lambda key: [(1, 3600)] if key.startswith("-") else [(100, 1)])
    for _ in range(10):
        await limiter.acquire("42")
    await limiter.acquire("-100")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire("-100"), 0.05)


async def test_a_429_is_waited_out_and_the_call_made_again_once() -> None:
    limiter = RateLimiter(lambda key: [(100, 1)])
    calls: list[str] = []

    async def send() -> str:
        calls.append("send")
        if len(calls) < 3:
            raise TooMany(0.01)
        return "sent"

    assert await limiter.call("chat", send, retry_after=_retry_after) == "sent"
    assert calls == ["send"] * 3 and limiter.honoured == 2


async def test_other_errors_are_not_retried() -> None:
    limiter = RateLimiter(lambda key: [(100, 1)])
    calls = 0

    async def send() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        await limiter.call("chat", send, retry_after=_retry_after)
    assert calls == 1


async def test_a_pause_holds_every_call_of_that_chat() -> None:
    limiter = RateLimiter(lambda key: [(100, 1)])
    limiter.pause("chat", 3600)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire("chat"), 0.05)
    await limiter.acquire("other")
    limiter.pause(None, 3600)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire("other"), 0.05)


async def test_gives_up_after_the_last_attempt() -> None:
    limiter = RateLimiter(lambda key: [(100, 1)])

    async def always() -> None:
        raise TooMany(0.001)

    with pytest.raises(TooMany):
        await limiter.call("chat", always, retry_after=_retry_after, attempts=3)
    assert limiter.honoured == 2


async def test_keys_are_bounded() -> None:
    limiter = RateLimiter(lambda key: [(100, 1)], max_keys=10)
    for i in range(100):
        await limiter.acquire(str(i))
    assert len(limiter._keys) == 10


async def test_capacity_can_be_asked_without_waiting() -> None:
    limiter = RateLimiter(lambda key: [(2, 3600)])
    assert limiter.has_capacity("k", 2)
    await limiter.acquire("k")
    assert limiter.has_capacity("k") and not limiter.has_capacity("k", 2)
    limiter.pause("k", 3600)
    assert not limiter.has_capacity("k")


async def test_calls_on_a_busy_key_take_turns_between_parties() -> None:
    """One user's ten replies queued on a channel, then another user's one: it goes right after the call that
    already held the line (third), not eleventh."""
    limiter = RateLimiter(lambda key: [(1, 0.02)])
    order: list[str] = []

    async def post(party: str, n: int) -> None:
        await limiter.call("chan:C1", lambda: asyncio.sleep(0), retry_after=_retry_after, party=party)
        order.append(f"{party}{n}")

    ana = [asyncio.create_task(post("ana", n)) for n in range(10)]
    await asyncio.sleep(0)
    rui = asyncio.create_task(post("rui", 0))
    await asyncio.gather(*ana, rui)
    assert order[:4] == ["ana0", "ana1", "rui0", "ana2"], order
    assert sorted(order) == sorted([f"ana{n}" for n in range(10)] + ["rui0"])
    assert not limiter._turns  # nothing left behind for a key nobody waits on


async def test_a_cancelled_call_passes_its_turn_on() -> None:
    limiter = RateLimiter(lambda key: [(1, 3600)])
    await limiter.acquire("chan:C1", "ana")  # the bucket is now empty for an hour
    held = asyncio.create_task(limiter.acquire("chan:C1", "ana"))  # has the turn, waits for the bucket
    waiting = asyncio.create_task(limiter.acquire("chan:C1", "rui"))  # waits for the turn
    await asyncio.sleep(0.01)
    assert limiter._turns["chan:C1"].waiting == 1  # rui
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    await asyncio.sleep(0.01)
    turns = limiter._turns["chan:C1"]
    assert turns.busy and not turns.waiting  # rui has the turn now (and waits for the bucket)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert "chan:C1" not in limiter._turns
