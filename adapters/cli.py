"""The ``internvl-bot`` command. It is the composition root: it wires adapters to the core, so it lives
at the edge with the adapters (``bot/`` never imports an adapter).

Commands: ``serve`` (the service: web chat and every enabled adapter), ``chat`` (console),
``make-demo-model DIR``, ``forget --conversation KEY``, ``migrate --to postgres``, ``kb`` (knowledge bases:
``add``, ``sync``, ``list``, ``search``, ``remove``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from adapters import kb_command
from bot import __version__
from bot.config import Settings
from bot.errors import StartupError, describe
from bot.ops.logs import redact, setup_logging
from bot.runtime import DEMO_BANNER, Runtime, open_store
from bot.types import ConversationKey

log = logging.getLogger("internvl_bot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvl-bot", description="InternVL behind your chat tools.")
    parser.add_argument("--config", help="config file (default: $INTERNVL_BOT_CONFIG or ./config.yaml)")
    parser.add_argument("--version", action="version", version=f"internvl-bot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service: the web chat, every enabled adapter, /metrics")
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port; 0 = any free port)")
    serve.add_argument("--check", action="store_true",
                       help="check each part (store, engine, every enabled platform: tokens, URLs), one line each, "
                            "then exit (1 when any failed)")
    serve.add_argument("--offline", action="store_true",
                       help="with --check: config, secrets, store and an in-process model only; no platform or "
                            "model server contacted (CI)")

    chat = sub.add_parser("chat", help="talk to the bot in this terminal (works with piped stdin too)")
    chat.add_argument("--conversation", help="conversation name (default: your user name)")
    chat.add_argument("--persona", default="", help="persona for a new conversation")

    demo = sub.add_parser("make-demo-model", help="build the tiny random InternVL used for demos and tests")
    demo.add_argument("directory")
    demo.add_argument("--seed", type=int, default=0)

    forget = sub.add_parser("forget", help="delete a conversation's messages and files for good")
    forget.add_argument("--conversation", required=True, help="conversation key, e.g. console:alice")

    export = sub.add_parser("export", help="rated conversations as InternVL fine-tuning data (README: Fine-tuning)")
    export.add_argument("format", choices=["sft", "mpo"],
                        help="sft: answers rated up or corrected by agents; mpo: preference pairs the bot observed")
    export.add_argument("--out", required=True, type=Path, help="folder for the meta JSON, the JSONL and images/")
    export.add_argument("--since", type=_date, default=0.0, help="only feedback from this day on (YYYY-MM-DD, UTC)")
    export.add_argument("--persona", default=None, help="only answers of this persona")
    export.add_argument("--min-rating", choices=["up"], default="up",
                        help="up (the only level so far): answers rated up, or an agent's corrected text")
    export.add_argument("--name", default="internvl_bot", help="the dataset's name in the meta JSON")

    migrate = sub.add_parser("migrate", help="copy the SQLite store into PostgreSQL (for replicas); safe to rerun")
    migrate.add_argument("--to", required=True, choices=["postgres"],
                         help="postgres: the database in the environment variable named by store.url_env")

    kb_command.add_parser(sub)
    return parser


async def _chat(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.console import ConsoleAdapter

    async with Runtime(settings, exclusive=True) as runtime:
        assert runtime.manager is not None
        if runtime.engine is not None and runtime.engine.info.demo:
            print(DEMO_BANNER, file=sys.stderr, flush=True)
        conf = settings.adapters.console  # type: ignore[attr-defined]
        console = ConsoleAdapter(runtime.manager, conversation=args.conversation, persona=args.persona or conf.persona,
                                 policy=conf.policy(settings.limits))
        await runtime.manager.start()
        if console.interactive:
            print("Type a question; /image PATH attaches a photo; /help lists commands; /quit leaves.",
                  file=sys.stderr)
        await console.run()
    return 0


async def _forget(settings: Settings, key: str) -> int:
    store = open_store(settings)
    await store.open()
    try:
        report = await store.forget(ConversationKey.parse(key))
    finally:
        await store.close()
    print(f"deleted {report.messages} message(s) and {report.attachment_files} file(s) of {key}")
    return 0


def _date(value: str) -> float:
    try:
        return dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day as YYYY-MM-DD: {value!r}") from None


async def _export(settings: Settings, args: argparse.Namespace) -> int:
    from bot.l10n.personas import load_personas
    from bot.training.export import ExportOptions, export_mpo, export_sft

    personas = load_personas(settings.conversation.personas_dir or None)
    if args.persona is not None and args.persona not in personas:
        raise StartupError(f"--persona: no persona named {args.persona!r} — choose one of {', '.join(sorted(personas))}")
    store = open_store(settings)
    await store.open()
    try:
        run = export_sft if args.format == "sft" else export_mpo
        report = await run(store, settings, personas, ExportOptions(args.out, args.since, args.persona, args.name))
    finally:
        await store.close()
    print(f"exported {report.samples} {args.format} sample(s), {report.images} image(s) and {report.videos} video(s)"
          f" to {args.out}")
    for why, count in sorted(report.skipped.items()):
        print(f"  left out {count}: {why}", file=sys.stderr)
    return 0


async def _migrate(settings: Settings) -> int:
    from bot.store.copy import copy_sqlite_to_postgres

    url = settings.store.url
    if not url:
        raise StartupError(f"set the environment variable {settings.store.url_env} to the PostgreSQL database "
                           "to copy into (postgresql://user:password@host:5432/db)")
    print(f"copying {settings.store_path} into PostgreSQL…", file=sys.stderr, flush=True)
    report = await copy_sqlite_to_postgres(settings.store_path, settings.data_path / "attachments", url,
                                           languages={n: b.language for n, b in settings.knowledge.bases.items()})
    print(f"copied: {report.line()}")
    if report.missing_files:
        print(f"warning: {len(report.missing_files)} attachment file(s) were missing from "
              f"{settings.data_path / 'attachments'} and are not in PostgreSQL", file=sys.stderr)
    if settings.store.backend != "postgres":
        print("next: set store.backend: postgres in the config and start the replicas", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "make-demo-model":
            setup_logging("WARNING")
            from bot.engines.demo_model import make_demo_model

            path = make_demo_model(args.directory, seed=args.seed)
            print(f"demo model written to {path} (random weights: its answers are noise)")
            return 0
        from adapters.registry import load

        settings = load(args.config)
        quiet = args.command in ("chat", "kb") or (args.command == "serve" and args.check)
        setup_logging("WARNING" if quiet else settings.logging.level, settings.logging.json_format)
        settings.check_secrets()
        if args.command == "serve":
            from adapters import server

            if args.check:
                return asyncio.run(server.check(settings, offline=args.offline))
            if args.offline:
                raise StartupError("--offline goes with --check (serve --check --offline)")
            return asyncio.run(server.serve(settings, host=args.host, port=args.port))
        if args.command == "chat":
            return asyncio.run(_chat(settings, args))
        if args.command == "forget":
            return asyncio.run(_forget(settings, args.conversation))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "export":
            return asyncio.run(_export(settings, args))
        if args.command == "kb":
            return asyncio.run(kb_command.run(settings, args))
    except StartupError as exc:
        print(f"internvl-bot: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"internvl-bot: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # the outermost handler: one line for the person at the terminal, the traceback in the (redacted) log
        log.debug("%s failed", args.command, exc_info=True)
        print(f"internvl-bot: error: {args.command} failed: {redact(describe(exc))} (logging.level: DEBUG shows "
              "the traceback)", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
