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
import time
from collections.abc import Sequence
from pathlib import Path

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

    kb = sub.add_parser("kb", help="knowledge bases: index manuals and articles the bot answers from")
    kbsub = kb.add_subparsers(dest="kb_command", required=True)
    kb_add = kbsub.add_parser("add", help="index files and folders, or a platform's articles and solved tickets, "
                                          "into BASE (kept as its sources; rerun-safe)")
    kb_add.add_argument("base")
    kb_add.add_argument("paths", nargs="*", metavar="PATH",
                        help="PDF, Markdown, HTML, text or image files, folders; or a source such as chatwoot-portal:help")
    kb_add.add_argument("--chatwoot-portal", action="append", default=[], metavar="SLUG",
                        help="the published articles of this Chatwoot Help Center portal (adapters.chatwoot: "
                             "base_url, account_id, api_token_env)")
    kb_add.add_argument("--django-helpdesk-kb", action="store_true",
                        help="the items of django-helpdesk's public knowledge base (adapters.django_helpdesk.base_url)")
    kb_add.add_argument("--solved-tickets", action="append", default=[], choices=["chatwoot", "django-helpdesk"],
                        help="resolved conversations / closed tickets: the question and the agent's answer, with "
                             "e-mails, phone numbers and names removed")
    kb_add.add_argument("--ocr", action="store_true",
                        help="PDF pages without a text layer (scans) are read by the configured engine; "
                             "kb sync remembers it for these sources")
    kb_sync = kbsub.add_parser("sync", help="re-read BASE's sources: changed and new files, drop vanished ones")
    kb_sync.add_argument("base")
    kbsub.add_parser("list", help="every base: documents, chunks, last sync, sources")
    kb_search = kbsub.add_parser("search", help="the passages a question finds in BASE, best first")
    kb_search.add_argument("base")
    kb_search.add_argument("query")
    kb_search.add_argument("-k", type=int, default=5, help="passages at most (default 5)")
    kb_search.add_argument("--json", action="store_true", help="print a JSON list")
    kb_search.add_argument("--min-score", type=float, default=None,
                           help="threshold for this search (default: knowledge.min_score); 0 shows every match")
    kb_remove = kbsub.add_parser("remove", help="forget a source of BASE and the documents under it")
    kb_remove.add_argument("base")
    kb_remove.add_argument("path", help="a file or folder, or a source such as chatwoot-portal:help")
    return parser


async def _kb(settings: Settings, args: argparse.Namespace) -> int:
    """The ``kb`` commands, on the configured store (its database holds the knowledge bases)."""
    import json

    import httpx

    from adapters import kb_sources
    from bot.knowledge import open_index
    from bot.knowledge.ingest import OCR, Ingester
    from bot.knowledge.ocr import EngineReader, engine_reader

    ocr: EngineReader | None = None
    if getattr(args, "ocr", False):
        ocr = engine_reader(settings)  # a demo model is refused before anything is read
    store = open_store(settings)
    await store.open()
    # the platforms' sources read through one client; no redirect is followed (a token stays on its host)
    http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=False)
    try:
        index = open_index(settings, store)
        if ocr is None and args.kb_command == "sync" and any(s.kind == OCR for s in await index.sources(args.base)):
            ocr = engine_reader(settings)  # sources added with --ocr are read with it again
        ingester = Ingester(index, store, settings.knowledge, remote=kb_sources.resolver(settings, http), ocr=ocr)
        command = args.kb_command
        if command in ("add", "sync"):
            wanted = [*args.paths, *kb_sources.locations(
                chatwoot_portals=args.chatwoot_portal, django_helpdesk_kb=args.django_helpdesk_kb,
                solved_tickets=args.solved_tickets)] if command == "add" else []
            if command == "add" and not wanted:
                raise ValueError("kb add: name what to index: PATH..., --chatwoot-portal SLUG, --django-helpdesk-kb "
                                 "or --solved-tickets chatwoot|django-helpdesk")
            try:
                report = await (ingester.add(args.base, wanted, ocr=ocr is not None) if command == "add"
                                else ingester.sync(args.base))
            except (KeyboardInterrupt, asyncio.CancelledError):
                print(f"interrupted: what was indexed is kept; `internvl-bot kb sync {args.base}` resumes",
                      file=sys.stderr, flush=True)
                raise
            print(f"{args.base}: {report.line()}")
            if report.sources_failed:
                return 1
            return 0 if report.added + report.updated + report.unchanged or not report.problems else 1
        if command == "list":
            bases = {b.name: b for b in await index.bases()}
            names = sorted(set(bases) | set(settings.knowledge.bases))
            if not names:
                print("no knowledge base yet: internvl-bot kb add BASE PATH...")
            for name in names:
                summary = bases.get(name)
                sources = list(dict.fromkeys([*(s.location + (" (ocr)" if s.kind == OCR else "")
                                                for s in (summary.sources if summary else ())),
                                              *(settings.knowledge.bases[name].sources
                                                if name in settings.knowledge.bases else [])]))
                synced = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.synced_at)) \
                    if summary and summary.synced_at else "never"
                print(f"{name}: {summary.documents if summary else 0} documents, {summary.chunks if summary else 0} "
                      f"chunks, last sync {synced}; sources: {', '.join(sources) or '(none)'}")
            return 0
        if command == "search":
            if args.min_score is not None:
                index.min_score = args.min_score
            found = await index.search([args.base], args.query, k=args.k)
            if args.json:
                print(json.dumps([{"doc": p.doc, "title": p.title, "page": p.page, "score": p.score, "text": p.text}
                                  for p in found], ensure_ascii=False, indent=2))
                return 0
            if not found:
                print(f"nothing relevant in {args.base} (no passage scores {index.min_score} or more: "
                      "knowledge.min_score)")
            for rank, p in enumerate(found, 1):
                where = f" > {p.heading}" if p.heading else ""
                print(f"{rank}. [{p.score:.2f}] {p.label}{where} ({p.doc})")
                print("   " + " ".join(p.text.split())[:300])
            return 0
        if command == "remove":
            was_source, removed = await ingester.remove(args.base, args.path)
            if not was_source and not removed:
                print(f"{args.base}: {args.path} is neither a source nor an indexed document", file=sys.stderr)
                return 1
            print(f"{args.base}: {removed} document(s) removed; {args.path} is no longer a source")
            return 0
        raise ValueError(f"unknown kb command {command!r}")
    finally:
        await http.aclose()
        if ocr is not None:
            await ocr.close()
        await store.close()


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
            return asyncio.run(_kb(settings, args))
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
