"""A burst on Telegram: 30 private chats and 3 busy groups ask at once, against the local Bot API server
(tests/fakes/telegram_api.py) with Telegram's flood limits on (1 message a second per chat with a short
burst, 20 a minute per group, 30 a second in all; edits count).

The adapter runs in polling mode on python-telegram-bot, the engine is the echo engine streaming a few
words a second (so answers stream and edits happen). Time to first visible text: from the moment an
update is handed to Telegram to the first thing its asker sees of the answer (a draft preview in a private
chat, a message replying to the question in a group). Counted at the end: questions without an answer
(lost), questions answered more than once (duplicates), and 429s Telegram served that were not waited out
and retried (unhandled_429).

    python bench/telegram_burst.py [--private 30] [--groups 3] [--per-group 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.registry import AppSettings
from adapters.telegram.adapter import TelegramAdapter
from bot.engines import EchoEngine
from bot.runtime import Runtime
from tests.fakes.telegram_api import ChatSpec, FakeTelegram, UserSpec, group, private

BOT = "internvl_test_bot"
QUESTION = "my washing machine stops mid-cycle and shows error E21, what should I check first?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run(args: argparse.Namespace) -> dict[str, float]:
    async with FakeTelegram(flood_control=True) as tg:
        os.environ["TELEGRAM_BOT_TOKEN"] = tg.token
        with tempfile.TemporaryDirectory() as tmp:
            settings = AppSettings(
                data_dir=tmp, engine={"generation": {"max_new_tokens": 64}},
                adapters={"web": {"enabled": False}, "telegram": {
                    "enabled": True, "base_url": tg.base_url, "base_file_url": tg.base_file_url, "poll_timeout": 5}})
            async with Runtime(settings, engine=EchoEngine(max_concurrency=8, delay=args.word_delay)) as runtime:
                assert runtime.manager is not None
                adapter = TelegramAdapter(runtime.manager, runtime.settings, settings.adapters.telegram)  # type: ignore[attr-defined]
                await runtime.manager.start()
                await adapter.start()
                asked: list[tuple[ChatSpec, int, float, str]] = []  # chat, question message id, when, answer
                chats = [private(1_000 + i) for i in range(args.private)]
                groups = [group(-100_900_000_000 - g, title=f"busy group {g}") for g in range(args.groups)]
                for i, chat in enumerate(chats):
                    update = tg.user_message(chat, UserSpec(1_000 + i, f"user{i}"), text=f"{QUESTION} #{i}")
                    tg.push_update(update)
                    asked.append((chat, update["message"]["message_id"], time.monotonic(), f"echo: {QUESTION} #{i}"))
                mention = [{"type": "mention", "offset": 0, "length": len(BOT) + 1}]
                for g, chat in enumerate(groups):
                    for k in range(args.per_group):
                        text = f"@{BOT} {QUESTION} g{g}.{k}"
                        update = tg.user_message(chat, UserSpec(5_000 + k, f"member{k}"), text=text, entities=mention)
                        tg.push_update(update)
                        asked.append((chat, update["message"]["message_id"], time.monotonic(),
                                      f"echo: {QUESTION} g{g}.{k}"))

                def answered() -> bool:
                    return all(any(m.text == want for m in tg.chat(chat.id)) for chat, _, _, want in asked)

                with contextlib.suppress(TimeoutError):  # what never came is counted as lost below
                    await tg.wait_for(answered, args.timeout)
                await asyncio.wait_for(runtime.manager.idle(), args.timeout)
                lost = duplicates = 0
                ttfv: list[float] = []
                for chat, question, at, want in asked:
                    finals = [m for m in tg.chat(chat.id) if m.text == want and not m.deleted]
                    lost += not finals
                    duplicates += max(0, len(finals) - 1)
                    if chat.type == "private":
                        seen = [d["time"] for d in tg.drafts if d["chat_id"] == chat.id and d["time"] >= at]
                        seen += [c.time for c in tg.calls if c.method == "sendMessage" and c.status == 200
                                 and int(c.params.get("chat_id", 0)) == chat.id]
                    else:
                        seen = [c.time for c in tg.calls if c.method == "sendMessage" and c.status == 200
                                and int(c.params.get("chat_id", 0)) == chat.id
                                and (c.params.get("reply_parameters") or {}).get("message_id") == question]
                    if seen:
                        ttfv.append((min(seen) - at) * 1000)
                unhandled = max(0, tg.served_429 - adapter.limiter.honoured)
                adapter.stop_intake()
                await runtime.manager.stop(2)
                await adapter.close()
                return {"chats": len(chats) + len(groups), "questions": len(asked), "lost": lost,
                        "duplicates": duplicates, "unhandled_429": unhandled, "served_429": tg.served_429,
                        "p50": statistics.median(ttfv) if ttfv else float("nan"),
                        "p99": percentile(ttfv, 0.99) if ttfv else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--private", type=int, default=30)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--per-group", type=int, default=5)
    parser.add_argument("--word-delay", type=float, default=0.05, help="echo engine: seconds per word")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    r = asyncio.run(run(args))
    print(f"{r['chats']} chats ({args.private} private, {args.groups} groups of {args.per_group} questions), "
          f"{r['questions']} questions: lost {r['lost']}, duplicates {r['duplicates']}, "
          f"429s served {r['served_429']} (all waited out and retried: {r['unhandled_429'] == 0})")
    print(f"time to first visible text: p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms")
    print(f"RESULT chats={r['chats']} lost={r['lost']} duplicates={r['duplicates']} "
          f"unhandled_429={r['unhandled_429']} ttfv_p50_ms={r['p50']:.0f} ttfv_p99_ms={r['p99']:.0f}")


if __name__ == "__main__":
    main()
