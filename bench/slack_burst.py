"""A burst on Slack: 30 threads started in one channel and 10 DMs at once, against the local Slack
(tests/fakes/slack_api.py) with Slack's rate limits on (chat.postMessage about 1 a second per channel with
short bursts; chat.startStream and chat.stopStream 20 a minute, chat.update 50, chat.appendStream 100, per
workspace).

The adapter runs in Socket Mode on slack-bolt, the engine is the echo engine streaming a few words a
second, answers stream natively. Time to first visible text: from the event's delivery to the first text
of its answer in the thread (the chat.startStream that carries it, or a posted message). Counted at the
end: questions without an answer (lost), answered more than once (duplicates), and 429s that were not
waited out and retried (unhandled_429).

    python bench/slack_burst.py [--threads 30] [--dms 10] [--slots 8]
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
from adapters.slack.adapter import SlackAdapter
from bot.engines import EchoEngine
from bot.runtime import Runtime
from tests.fakes.slack_api import FakeSlack

CHANNEL = "C0GENERAL"
QUESTION = "the dishwasher shows E15 and does not drain, what should I check first?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run(args: argparse.Namespace) -> dict[str, float]:
    async with FakeSlack(rate_limits=True) as slack:
        for env, value in (("SLACK_BOT_TOKEN", slack.bot_token), ("SLACK_APP_TOKEN", slack.app_token)):
            os.environ[env] = value
        with tempfile.TemporaryDirectory() as tmp:
            settings = AppSettings(data_dir=tmp, engine={"generation": {"max_new_tokens": 64}},
                                   adapters={"web": {"enabled": False},
                                             "slack": {"enabled": True, "api_url": slack.api_url}})
            async with Runtime(settings, engine=EchoEngine(max_concurrency=args.slots, delay=args.word_delay)) as runtime:
                assert runtime.manager is not None
                adapter = SlackAdapter(runtime.manager, runtime.settings, settings.adapters.slack)  # type: ignore[attr-defined]
                await runtime.manager.start()
                await adapter.start()
                await slack.wait_for(lambda: slack.socket_connections >= 1)
                asked: list[tuple[str, str, float, str]] = []  # channel, thread ts, when, answer
                events = []
                for i in range(args.threads):
                    user = f"U{i:04d}"
                    slack.add_user(user, name=f"user{i}")
                    events.append(slack.event_callback(slack.app_mention(
                        CHANNEL, user, f"<@{slack.bot_user_id}> {QUESTION} #{i}")))
                for i in range(args.dms):
                    user = f"UDM{i:03d}"
                    slack.add_user(user, name=f"dm{i}")
                    events.append(slack.event_callback(slack.message_event(
                        slack.dm_channel(user), user, f"{QUESTION} dm{i}", channel_type="im")))
                for payload in events:
                    event = payload["event"]
                    asked.append((event["channel"], event["ts"], time.monotonic(),
                                  "echo: " + event["text"].replace(f"<@{slack.bot_user_id}> ", "")))
                    await slack.send_socket_event(payload)

                def answers(channel: str, ts: str, want: str) -> list[object]:
                    # a channel's question is answered in its thread; a DM's at the DM's top level (one
                    # conversation per DM, like a Telegram private chat)
                    shown = slack.messages(channel) if channel.startswith("D") else slack.messages(channel, ts)
                    return [m for m in shown if m.ts != ts and not m.deleted and m.text.strip() == want
                            and not m.streaming and (m.thread_ts is None) == channel.startswith("D")]

                with contextlib.suppress(TimeoutError):  # what never came is counted as lost below
                    await slack.wait_for(lambda: all(answers(c, ts, w) for c, ts, _, w in asked), args.timeout)
                await asyncio.wait_for(runtime.manager.idle(), args.timeout)
                lost = duplicates = 0
                ttfv: list[float] = []
                for channel, ts, at, want in asked:
                    found = answers(channel, ts, want)
                    lost += not found
                    duplicates += max(0, len(found) - 1)
                    seen = [c.time for c in slack.calls if c.status == 200
                            and c.method in ("chat.startStream", "chat.postMessage")
                            and c.params.get("channel") == channel
                            and c.params.get("thread_ts") == (None if channel.startswith("D") else ts)]
                    if seen:
                        ttfv.append((min(seen) - at) * 1000)
                unhandled = max(0, slack.served_429 - adapter.limiter.honoured)
                adapter.stop_intake()
                await runtime.manager.stop(2)
                await adapter.close()
                return {"threads": len(asked), "lost": lost, "duplicates": duplicates, "unhandled_429": unhandled,
                        "served_429": slack.served_429,
                        "p50": statistics.median(ttfv) if ttfv else float("nan"),
                        "p90": percentile(ttfv, 0.90) if ttfv else float("nan"),
                        "p99": percentile(ttfv, 0.99) if ttfv else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=30, help="threads started in one channel")
    parser.add_argument("--dms", type=int, default=10)
    parser.add_argument("--word-delay", type=float, default=0.05, help="echo engine: seconds per word")
    parser.add_argument("--slots", type=int, default=8,
                        help="echo engine: generations at a time (as many as questions: only Slack's side is timed)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    r = asyncio.run(run(args))
    print(f"{r['threads']} threads ({args.threads} in one channel, {args.dms} DMs): lost {r['lost']}, duplicates "
          f"{r['duplicates']}, 429s served {r['served_429']} (all waited out and retried: {r['unhandled_429'] == 0})")
    print(f"time to first visible text: p50 {r['p50']:.0f} ms, p90 {r['p90']:.0f} ms, p99 {r['p99']:.0f} ms")
    print(f"RESULT threads={r['threads']} lost={r['lost']} duplicates={r['duplicates']} "
          f"unhandled_429={r['unhandled_429']} ttfv_p50_ms={r['p50']:.0f} ttfv_p90_ms={r['p90']:.0f} "
          f"ttfv_p99_ms={r['p99']:.0f}")


if __name__ == "__main__":
    main()
