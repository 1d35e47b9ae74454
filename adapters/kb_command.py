"""``internvl-bot kb``: knowledge bases — index files and the platforms' articles and solved tickets, list, search
and remove them (bot/knowledge). Each command opens the configured store: its database holds the bases."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING

import httpx

from adapters import kb_sources
from bot.config import Settings
from bot.runtime import open_store

if TYPE_CHECKING:
    from bot.knowledge.base import KnowledgeStore
    from bot.knowledge.ingest import Ingester


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``kb`` and its sub-commands, on the main parser's sub-commands."""
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


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """One ``kb`` command: its exit code (0 done; 1 something was not indexed or found)."""
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
        if ocr is None and args.kb_command in ("add", "sync") and \
                any(s.kind == OCR for s in await index.sources(args.base)):
            ocr = engine_reader(settings)  # sources added with --ocr are read with it again (a file added under one)
        ingester = Ingester(index, store, settings.knowledge, remote=kb_sources.resolver(settings, http), ocr=ocr)
        command = args.kb_command
        if command in ("add", "sync"):
            return await _index(ingester, args, ocr=ocr is not None)
        if command == "list":
            return await _list(index, settings)
        if command == "search":
            return await _search(index, args)
        if command == "remove":
            return await _remove(ingester, args)
        raise ValueError(f"unknown kb command {command!r}")
    finally:
        await http.aclose()
        if ocr is not None:
            await ocr.close()
        await store.close()


async def _index(ingester: Ingester, args: argparse.Namespace, *, ocr: bool) -> int:
    """``kb add`` / ``kb sync``: the report line; 1 when a source failed or nothing could be indexed."""
    add = args.kb_command == "add"
    wanted = [*args.paths, *kb_sources.locations(
        chatwoot_portals=args.chatwoot_portal, django_helpdesk_kb=args.django_helpdesk_kb,
        solved_tickets=args.solved_tickets)] if add else []
    if add and not wanted:
        raise ValueError("kb add: name what to index: PATH..., --chatwoot-portal SLUG, --django-helpdesk-kb "
                         "or --solved-tickets chatwoot|django-helpdesk")
    try:
        report = await (ingester.add(args.base, wanted, ocr=ocr) if add else ingester.sync(args.base))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"interrupted: what was indexed is kept; `internvl-bot kb sync {args.base}` resumes",
              file=sys.stderr, flush=True)
        raise
    print(f"{args.base}: {report.line()}")
    if report.sources_failed:
        return 1
    return 0 if report.added + report.updated + report.unchanged or not report.problems else 1


async def _list(index: KnowledgeStore, settings: Settings) -> int:
    """``kb list``: every base (stored or configured) with its counts, last sync and sources."""
    from bot.knowledge.ingest import OCR

    bases = {b.name: b for b in await index.bases()}
    names = sorted(set(bases) | set(settings.knowledge.bases))
    if not names:
        print("no knowledge base yet: internvl-bot kb add BASE PATH...")
    for name in names:
        summary = bases.get(name)
        configured = settings.knowledge.bases[name].sources if name in settings.knowledge.bases else []
        sources = list(dict.fromkeys([*(s.location + (" (ocr)" if s.kind == OCR else "")
                                        for s in (summary.sources if summary else ())), *configured]))
        synced = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.synced_at)) \
            if summary and summary.synced_at else "never"
        print(f"{name}: {summary.documents if summary else 0} documents, {summary.chunks if summary else 0} "
              f"chunks, last sync {synced}; sources: {', '.join(sources) or '(none)'}")
    return 0


async def _search(index: KnowledgeStore, args: argparse.Namespace) -> int:
    """``kb search``: the passages, best first (``--json``: the list operators' scripts read)."""
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


async def _remove(ingester: Ingester, args: argparse.Namespace) -> int:
    """``kb remove``: forget a source and the documents under it."""
    was_source, removed = await ingester.remove(args.base, args.path)
    if not was_source and not removed:
        print(f"{args.base}: {args.path} is neither a source nor an indexed document", file=sys.stderr)
        return 1
    print(f"{args.base}: {removed} document(s) removed; {args.path} is no longer a source")
    return 0
