"""Replicas on PostgreSQL: 3 ``internvl-bot serve`` processes behind nginx, 1,000 web conversations, one replica
SIGKILLed mid-run; then the same load on 1 replica for comparison.

Each conversation sends ``--messages`` questions through nginx's web API, one after the other as soon as the
previous is accepted (so questions queue per conversation and order matters). The engine is the echo engine
with ``--delay-ms`` per word and ``--concurrency`` generations at once per replica: it stands for a GPU server
per replica, so the replicas add model capacity the way a real deployment does. PostgreSQL 15 runs in a temp
dir (tests/postgres_cluster.py), nginx from apt, all on this machine's cores.

Counted from the database at the end: questions never answered (lost), answers beyond one per question
(duplicates), conversations whose answers are not in the order of their questions (order_violations).
failover_s: from the SIGKILL to the first answer another replica made in a conversation the killed one was
answering (the lease is ``--lease`` seconds). msgs_per_s: questions answered per second of the run, from the
first question sent to the last answer; msgs_per_s_1: the same on one replica (no kill).

    python bench/replicas.py [--conversations 1000] [--messages 2] [--lease 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from tests import postgres_cluster
from tests.replica_cluster import (
    NGINX,
    Cluster,
    WebUser,
    answered,
    browsers,
    kill_one_answering,
    taken_over_after,
    verdict,
)

QUESTION = "the printer shows a blinking orange light after I replaced the toner, what now?"


async def run(args: argparse.Namespace, url: str, replicas: int, *, kill: bool) -> dict[str, float]:
    total = args.conversations * args.messages
    with tempfile.TemporaryDirectory(prefix="internvl-replicas-") as tmp:
        cluster = Cluster(Path(tmp), url, replicas, delay_ms=args.delay_ms, lease=args.lease,
                          concurrency=args.concurrency)
        try:
            await cluster.start()
            limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
            async with browsers(timeout=60, limits=limits) as http:
                users = [WebUser(cluster, cluster.replicas[0].url) for _ in range(args.conversations)]
                gate = asyncio.Semaphore(args.clients)

                async def session(user: WebUser) -> None:
                    async with gate:
                        response = await http.get(f"{cluster.url}/")
                        response.raise_for_status()
                        user.cookie = response.cookies.get("internvl_bot_session") or ""
                        assert user.cookie, "no session cookie"

                await asyncio.gather(*(session(u) for u in users))
                started = time.monotonic()

                async def converse(i: int, user: WebUser) -> None:
                    for n in range(args.messages):
                        async with gate:
                            await user.say(http, f"conversation {i} question {n}: {QUESTION}")

                sending = asyncio.gather(*(converse(i, u) for i, u in enumerate(users)))
                failover = 0.0
                if kill:
                    while await answered(url) < total // 3:
                        await asyncio.sleep(0.05)
                    killed = await kill_one_answering(cluster, url, spare=cluster.replicas[0])
                    print(f"killed replica {killed.replica.index} while it answered "
                          f"{len(killed.conversations)} conversation(s)", file=sys.stderr)
                await sending
                deadline = time.monotonic() + args.timeout
                while await answered(url) < total and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                elapsed = time.monotonic() - started
                if kill:
                    failover = await taken_over_after(url, killed) or float("nan")
                retries = sum(u.retries for u in users)
        finally:
            cluster.stop()
    found = await verdict(url)
    return {"questions": found.questions, "lost": found.lost + found.pending, "duplicates": found.duplicates,
            "order_violations": found.order_violations, "wrong": found.wrong, "failover_s": failover,
            "msgs_per_s": found.questions / elapsed, "retries": retries}


async def main(args: argparse.Namespace) -> None:
    if NGINX is None or not postgres_cluster.available():
        raise SystemExit("bench/replicas.py needs nginx and PostgreSQL 15 (apt-get install nginx postgresql)")
    with postgres_cluster.cluster() as pg:
        three = await run(args, pg.database(), args.replicas, kill=True)
        print(f"{args.replicas} replicas: {three}", file=sys.stderr)
        one = await run(args, pg.database(), 1, kill=False)
        print(f"1 replica: {one}", file=sys.stderr)
    print(f"RESULT replicas={args.replicas} lost={three['lost']} duplicates={three['duplicates']} "
          f"order_violations={three['order_violations']} failover_s={three['failover_s']:.2f} "
          f"msgs_per_s={three['msgs_per_s']:.1f} msgs_per_s_1={one['msgs_per_s']:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2, help="questions per conversation")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--delay-ms", type=int, default=10, help="echo engine: milliseconds per word")
    parser.add_argument("--concurrency", type=int, default=8, help="generations at once per replica")
    parser.add_argument("--lease", type=float, default=5, help="store.lease_seconds")
    parser.add_argument("--clients", type=int, default=64, help="HTTP requests in flight at once")
    parser.add_argument("--timeout", type=float, default=600)
    asyncio.run(main(parser.parse_args()))
