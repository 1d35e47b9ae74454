"""Platforms down in the middle of a burst: nothing lost, nothing doubled, back soon after they recover.

Telegram (polling, python-telegram-bot), Slack (Socket Mode, slack-bolt) and Chatwoot (signed webhooks),
each against its local fake (tests/fakes/; Slack's with its rate limits on: over them, a 429), each with its own runtime and the echo engine, in one event
loop. Questions arrive over ``--seconds`` (200 in all by default, a third per platform, several chats /
channels / conversations each). In the middle, every platform's API answers 503 for half of ``--outage``
seconds, then stops answering (requests time out) for the other half, then recovers. What the platforms
send the bot keeps coming (Slack's socket, Chatwoot's webhooks; Telegram's updates wait at Telegram).

Counted at the end, from what each user's chat shows: questions never answered (lost), answered more than
once (duplicates), and for the answers that arrived after the recovery, how long after it (or after the
question, if asked later) the slowest one came (max_delay_after_recovery_s).

    python bench/outage.py [--questions 200] [--seconds 40] [--outage 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.chatwoot import ChatwootAdapter
from adapters.registry import AppSettings
from adapters.server import Service, build_app
from adapters.slack.adapter import SlackAdapter
from adapters.telegram.adapter import TelegramAdapter
from bot.engines import EchoEngine
from bot.runtime import Runtime
from tests.fakes.chatwoot_api import FakeChatwoot
from tests.fakes.serving import free_port, serve_asgi
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram, UserSpec, private

QUESTION = "the boiler shows F28 after the night, what should I check"
FOREVER = 10**6  # faults "until healed"


@dataclass
class Asked:
    platform: str
    where: Any
    at: float
    want: str
    answered_at: float | None = None
    copies: int = 0


@dataclass
class Platform:
    name: str
    ask: Callable[[int], Any]  # coroutine function: ask question i, return an Asked
    shown: Callable[[Asked], int]  # how many finished copies of its answer the chat shows
    down: Callable[[float], None]  # 503 everywhere; (then) time out, by the seconds given
    heal: Callable[[], None]
    refused: Callable[[], int] = lambda: 0  # "too many requests" the platform answered (its rate limits)
    asked: list[Asked] = field(default_factory=list)


def switch(methods: tuple[str, ...], fail: Callable[[str], None],
           delay: Callable[[str, float], None]) -> Callable[[float], None]:
    """A platform's ``down``: every method answers 503 (seconds 0), or hangs that many seconds."""
    def down(seconds: float) -> None:
        for method in methods:
            if seconds:
                delay(method, seconds)
            else:
                fail(method)
    return down


def settings(tmp: str, adapters: dict[str, Any]) -> AppSettings:
    return AppSettings(data_dir=tmp, engine={"generation": {"max_new_tokens": 32}},
                       conversation={"delivery_deadline_seconds": 600},
                       adapters={"web": {"enabled": False}, **adapters})


@contextlib.asynccontextmanager
async def telegram(tmp: str, word_delay: float) -> AsyncIterator[Platform]:
    async with FakeTelegram() as tg:
        os.environ["TELEGRAM_BOT_TOKEN"] = tg.token
        conf = settings(tmp, {"telegram": {"enabled": True, "base_url": tg.base_url,
                                           "base_file_url": tg.base_file_url, "poll_timeout": 2}})
        async with Runtime(conf, engine=EchoEngine(max_concurrency=4, delay=word_delay)) as runtime:
            assert runtime.manager is not None
            adapter = TelegramAdapter(runtime.manager, runtime.settings, conf.adapters.telegram)  # type: ignore[attr-defined]
            await runtime.manager.start()
            await adapter.start()
            methods = ("sendMessage", "sendMessageDraft", "editMessageText", "sendChatAction", "deleteMessage",
                       "getUpdates")

            async def ask(i: int) -> Asked:
                chat = 500 + i % 8
                text = f"{QUESTION} (tg {i})"
                tg.push_update(tg.user_message(private(chat), UserSpec(chat, f"User {chat}", f"user{chat}"), text=text))
                return Asked("telegram", chat, time.monotonic(), f"echo: {text}")

            def shown(q: Asked) -> int:
                return sum(1 for m in tg.chat(q.where) if not m.deleted and m.text == q.want)

            down = switch(methods, lambda m: tg.fail(m, 503, times=FOREVER),
                          lambda m, s: tg.delay(m, s, times=FOREVER))
            try:
                yield Platform("telegram", ask, shown, down, tg.heal)
            finally:
                adapter.stop_intake()
                await runtime.manager.stop(2)
                await adapter.close()


@contextlib.asynccontextmanager
async def slack(tmp: str, word_delay: float) -> AsyncIterator[Platform]:
    async with FakeSlack(rate_limits=True) as fake:  # Slack's limits enforced: over them, a 429
        os.environ["SLACK_BOT_TOKEN"], os.environ["SLACK_APP_TOKEN"] = fake.bot_token, fake.app_token
        conf = settings(tmp, {"slack": {"enabled": True, "api_url": fake.api_url}})
        async with Runtime(conf, engine=EchoEngine(max_concurrency=4, delay=word_delay)) as runtime:
            assert runtime.manager is not None
            adapter = SlackAdapter(runtime.manager, runtime.settings, conf.adapters.slack)  # type: ignore[attr-defined]
            await runtime.manager.start()
            await adapter.start()
            await fake.wait_for(lambda: fake.socket_connections >= 1)
            methods = ("chat.postMessage", "chat.update", "chat.delete", "chat.startStream", "chat.appendStream",
                       "chat.stopStream", "assistant.threads.setStatus", "users.info")

            async def ask(i: int) -> Asked:
                channel, user = f"C0CHAN{i % 6}", f"U{i:04d}"
                fake.add_user(user, name=f"user{i}")
                text = f"{QUESTION} (slack {i})"
                payload = fake.event_callback(fake.app_mention(channel, user, f"<@{fake.bot_user_id}> {text}"))
                await fake.send_socket_event(payload)
                return Asked("slack", (channel, payload["event"]["ts"]), time.monotonic(), f"echo: {text}")

            def shown(q: Asked) -> int:
                channel, ts = q.where
                return sum(1 for m in fake.messages(channel, ts)
                           if m.ts != ts and not m.deleted and not m.streaming and m.text.strip() == q.want)

            down = switch(methods, lambda m: fake.fail(m, status=503, times=FOREVER),
                          lambda m, s: fake.delay(m, s, times=FOREVER))
            try:
                yield Platform("slack", ask, shown, down, fake.heal, lambda: fake.served_429)
            finally:
                adapter.stop_intake()
                await runtime.manager.stop(2)
                await adapter.close()


@contextlib.asynccontextmanager
async def chatwoot(tmp: str, word_delay: float) -> AsyncIterator[Platform]:
    async with FakeChatwoot(secret="outage-bench-secret") as cw:
        os.environ["CHATWOOT_BOT_TOKEN"], os.environ["CHATWOOT_WEBHOOK_SECRET"] = cw.bot_token, "outage-bench-secret"
        port = free_port()
        conf = settings(tmp, {"chatwoot": {"enabled": True, "base_url": cw.url}})
        async with Runtime(conf, engine=EchoEngine(max_concurrency=4, delay=word_delay)) as runtime:
            assert runtime.manager is not None
            adapter = ChatwootAdapter(runtime.manager, runtime.settings, conf.adapters.chatwoot)  # type: ignore[attr-defined]
            service = Service(runtime.settings, runtime, [adapter])
            service.ready = True
            async with serve_asgi(build_app(service), port=port):
                await runtime.manager.start()
                await adapter.start()
                cw.webhook_url = f"http://127.0.0.1:{port}/chatwoot/webhook"
                conversations = [cw.conversation() for _ in range(10)]

                async def ask(i: int) -> Asked:
                    conv = conversations[i % len(conversations)]
                    text = f"{QUESTION} (chatwoot {i})"
                    await cw.customer_message(conv, text)
                    return Asked("chatwoot", conv, time.monotonic(), f"echo: {text}")

                def shown(q: Asked) -> int:
                    return cw.public_replies(q.where).count(q.want)

                down = switch(("*",), lambda m: cw.fail(m, status=503, times=FOREVER),
                              lambda m, s: cw.delay(m, s, times=FOREVER))
                try:
                    yield Platform("chatwoot", ask, shown, down, cw.heal)
                finally:
                    adapter.stop_intake()
                    await runtime.manager.stop(2)
                    await adapter.close()


async def burst(platform: Platform, count: int, seconds: float) -> None:
    for i in range(count):
        platform.asked.append(await platform.ask(i))
        await asyncio.sleep(seconds / count)


async def outage(platforms: list[Platform], start: float, length: float) -> float:
    """Down at ``start`` s for ``length`` s: 503 for the first half, time-outs for the second; when back."""
    await asyncio.sleep(start)
    for p in platforms:
        p.down(0)
    await asyncio.sleep(length / 2)
    for p in platforms:
        p.heal()
        p.down(60.0)  # longer than every client's timeout
    await asyncio.sleep(length / 2)
    for p in platforms:
        p.heal()
    return time.monotonic()


async def watch(platforms: list[Platform], until: float, burst_over: asyncio.Event) -> None:
    """Note when each answer first shows, until the burst is over and all are shown (or ``until``)."""
    while time.monotonic() < until:
        pending = 0
        for p in platforms:
            for q in p.asked:
                copies = p.shown(q)
                if copies and q.answered_at is None:
                    q.answered_at = time.monotonic()
                q.copies = copies
                pending += not copies
        if pending == 0 and burst_over.is_set():
            return
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> dict[str, float]:
    per = [args.questions // 3 + (i < args.questions % 3) for i in range(3)]  # 200: 67, 67, 66
    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as stack:
            platforms = [await stack.enter_async_context(make(str(Path(tmp) / make.__name__), args.word_delay))
                         for make in (telegram, slack, chatwoot)]
            start = (args.seconds - args.outage) / 2 if args.seconds > args.outage else 1.0
            burst_over = asyncio.Event()
            watcher = asyncio.create_task(watch(platforms, time.monotonic() + args.seconds + args.timeout,
                                                burst_over))
            recovered_task = asyncio.create_task(outage(platforms, start, args.outage))
            await asyncio.gather(*(burst(p, n, args.seconds) for p, n in zip(platforms, per, strict=True)))
            recovered = await recovered_task
            burst_over.set()
            await watcher
    for p in platforms:
        print(f"  {p.name}: " + ", ".join(f"{k} {v:g}" for k, v in summary(p.asked, recovered).items())
              + (f", 429s served {p.refused()}" if p.name == "slack" else ""))
        if os.environ.get("OUTAGE_LOG"):
            for q in p.asked:
                late = f"{q.answered_at - recovered:+.1f}" if q.answered_at is not None else "never"
                print(f"    {q.where}: asked {q.at - recovered:+.1f} s, answered {late} s, copies {q.copies}")
    return summary([q for p in platforms for q in p.asked], recovered)


def summary(asked: list[Asked], recovered: float) -> dict[str, float]:
    late = [q.answered_at - max(q.at, recovered) for q in asked
            if q.answered_at is not None and q.answered_at >= recovered]
    return {"questions": len(asked), "lost": sum(q.answered_at is None for q in asked),
            "duplicates": sum(max(0, q.copies - 1) for q in asked),
            "max_delay_after_recovery_s": round(max(late, default=0.0), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=200, help="in all, a third per platform")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the questions keep coming")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the platforms are down, mid-burst")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for answers after the burst")
    parser.add_argument("--word-delay", type=float, default=0.01)
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("OUTAGE_LOG", "ERROR"), format="%(relativeCreated)7.0f %(name)s %(message)s")
    r = asyncio.run(run(args))
    print(f"{r['questions']} questions on Telegram, Slack and Chatwoot, all three down {args.outage:g} s mid-burst: "
          f"lost {r['lost']}, duplicates {r['duplicates']}, slowest answer "
          f"{r['max_delay_after_recovery_s']:.1f} s after the recovery")
    print(f"RESULT questions={r['questions']} lost={r['lost']} duplicates={r['duplicates']} "
          f"max_delay_after_recovery_s={r['max_delay_after_recovery_s']:.1f}")


if __name__ == "__main__":
    main()
