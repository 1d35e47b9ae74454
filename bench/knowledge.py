"""Knowledge bases: ingestion speed and memory, search latency, retrieval quality and the threshold.

1. Ingest one generated PDF of ``--pages`` pages (text layer; default 2,000) through the real ``Ingester``
   into a SQLite store, in a child process: pages per second, and the peak RSS above the RSS before
   ingesting. Goals: >= 50 pages/s on 2 cores; <= 300 MB.
2. Search latency over ``--chunks`` generated chunks (default 100,000; words drawn from a Zipf law over
   a 20,000-word vocabulary), ``--queries`` queries of 2 to 6 words: p50 and p99 on SQLite FTS5. Goals:
   p50 <= 5 ms, p99 <= 20 ms. The same on PostgreSQL when a cluster can be started here
   (tests/postgres_cluster.py): ``pg_search_p50_ms``, ``pg_search_p99_ms``.
3. Retrieval: the 30 documents of bench/data/knowledge/docs (every third as a PDF) and its questions,
   paraphrased (bench/data/knowledge/questions.jsonl): recall@5 (expected document among the 5
   passages returned at ``knowledge.min_score``), the same without the threshold, and the share of the
   off-topic questions (``"doc": null``) for which nothing is returned.

    python bench/knowledge.py [--pages 2000] [--chunks 100000] [--queries 1000] [--no-postgres]

Ends with ``RESULT pages_per_s=… search_p50_ms=… search_p99_ms=… recall_at_5=… rss_mb=…`` and extra fields.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import Settings  # noqa: E402
from bot.knowledge import Chunk, Document, KnowledgeStore, open_index  # noqa: E402
from bot.knowledge.ingest import Ingester  # noqa: E402
from bot.store import SQLiteStore  # noqa: E402

DATA = ROOT / "bench" / "data" / "knowledge"


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def vocabulary(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ter", "van", "do", "re", "sul", "pen", "ix", "or", "bra", "qua", "zen", "tu",
                 "fel", "gar", "hop", "nis", "wel"]
    words: dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))] = None
    return list(words)



def zipf(n: int) -> list[float]:
    """Cumulative Zipf weights (precomputed: ``random.choices`` would sum the weights on every call)."""
    return list(itertools.accumulate(1 / (i + 1) for i in range(n)))


def make_text(rng: random.Random, words: list[str], cum_weights: list[float], n_words: int) -> str:
    picked = rng.choices(words, cum_weights=cum_weights, k=n_words)
    sentences = [" ".join(picked[i:i + 12]).capitalize() + "." for i in range(0, len(picked), 12)]
    return " ".join(sentences)


def make_pdf(path: Path, pages: int, seed: int = 1) -> Path:
    from fpdf import FPDF

    words = vocabulary(5000, seed)
    weights = zipf(len(words))
    rng = random.Random(seed)
    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    pdf.set_auto_page_break(False)
    for n in range(pages):
        pdf.add_page()
        pdf.set_xy(10, 10)
        pdf.multi_cell(190, 5, f"Section {n + 1}. " + make_text(rng, words, weights, 260))
    pdf.output(str(path))
    return path


# -- 1. ingestion (child process) ---------------------------------------------------------------


def ingest_child(pdf: str, workdir: str) -> None:
    """Ingest ``pdf`` into a fresh store; print pages/s and the RSS growth as JSON (run as a child process)."""
    async def run() -> dict[str, float]:
        settings = Settings(data_dir=workdir)
        store = SQLiteStore(settings.store_path)
        await store.open()
        index = open_index(settings, store)
        base = rss_mb()
        started = time.perf_counter()
        report = await Ingester(index, store, settings.knowledge, progress=False).add("bench", [pdf])
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        await store.close()
        return {"pages": report.pages, "chunks": report.chunks, "seconds": seconds, "rss_mb": peak - base,
                "problems": len(report.problems)}

    print(json.dumps(asyncio.run(run())))


def bench_ingest(pages: int, workdir: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    pdf = make_pdf(workdir / "big.pdf", pages)
    print(f"generated a {pages}-page PDF ({pdf.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    run = subprocess.run([sys.executable, __file__, "--ingest-child", str(pdf), str(workdir / "ingest")],
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise SystemExit(run.stderr[-3000:])
    found = json.loads(run.stdout.strip().splitlines()[-1])
    if found["pages"] != pages or found["problems"]:
        raise SystemExit(f"the PDF was not ingested whole: {found}")
    print(f"ingest: {pages} pages, {found['chunks']} chunks in {found['seconds']:.1f} s, "
          f"+{found['rss_mb']:.0f} MB RSS", file=sys.stderr)
    return found


# -- 2. search latency --------------------------------------------------------------------------


async def fill(index: KnowledgeStore, chunks: int, per_doc: int = 100) -> float:
    words = vocabulary(20000)
    weights = zipf(len(words))
    rng = random.Random(3)
    started = time.perf_counter()
    for d in range(0, chunks, per_doc):
        n = min(per_doc, chunks - d)
        await index.put_document(Document("bench", f"/bench/doc{d // per_doc}.pdf", f"Manual {d // per_doc}",
                                          f"h{d}", "application/pdf", pages=n),
                                 [Chunk(make_text(rng, words, weights, 90), page=p + 1) for p in range(n)])
    return time.perf_counter() - started


async def latencies(index: KnowledgeStore, queries: int) -> tuple[float, float]:
    words = vocabulary(20000)
    weights = zipf(len(words))
    rng = random.Random(11)
    asked = [" ".join(rng.choices(words, cum_weights=weights, k=rng.randint(2, 6))) for _ in range(queries)]
    for q in asked[:20]:  # warm the page cache
        await index.search(["bench"], q)
    times = []
    for q in asked:
        t = time.perf_counter()
        await index.search(["bench"], q)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


async def bench_sqlite_search(chunks: int, queries: int, workdir: Path) -> tuple[float, float]:
    settings = Settings(data_dir=str(workdir / "search"))
    store = SQLiteStore(settings.store_path)
    await store.open()
    try:
        index = open_index(settings, store)
        took = await fill(index, chunks)
        print(f"sqlite: {chunks} chunks written in {took:.1f} s", file=sys.stderr)
        return await latencies(index, queries)
    finally:
        await store.close()


async def bench_postgres_search(chunks: int, queries: int) -> tuple[float, float] | None:
    from tests import postgres_cluster

    if not postgres_cluster.available():
        print("postgres: not installed, skipped", file=sys.stderr)
        return None
    from bot.store.postgres.store import PostgresStore

    with postgres_cluster.cluster() as cluster:
        store = PostgresStore(cluster.database(), min_size=1, max_size=2)
        await store.open()
        try:
            index = open_index(Settings(), store)
            took = await fill(index, chunks)
            print(f"postgres: {chunks} chunks written in {took:.1f} s", file=sys.stderr)
            async with store.pool.connection() as conn:
                await conn.execute("ANALYZE")
            return await latencies(index, queries)
        finally:
            await store.close()


# -- 3. retrieval quality -----------------------------------------------------------------------


def markdown_to_pdf(source: Path, target: Path) -> Path:
    """A Markdown document of the evaluation set as a PDF: headings bold, one section after the other."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            pdf.set_font("Helvetica", "B", 13 if line.startswith("# ") else 11)
            text = line.lstrip("#").strip()
        else:
            pdf.set_font("Helvetica", size=10)
            text = line
        if line.startswith("# "):
            pdf.set_title(text)
        pdf.multi_cell(0, 5, text.replace("–", "-") or " ", new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(target))
    return target


async def bench_retrieval(workdir: Path) -> dict[str, float]:
    docs = workdir / "eval"
    docs.mkdir()
    expected: dict[str, str] = {}
    for i, source in enumerate(sorted((DATA / "docs").glob("*.md"))):
        if i % 3 == 0:
            expected[source.name] = str(markdown_to_pdf(source, docs / (source.stem + ".pdf")).resolve())
        else:
            target = docs / source.name
            target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            expected[source.name] = str(target.resolve())
    settings = Settings(data_dir=str(workdir / "eval-store"))
    store = SQLiteStore(settings.store_path)
    await store.open()
    try:
        index = open_index(settings, store)
        report = await Ingester(index, store, settings.knowledge, progress=False).add("eval", [str(docs)])
        if report.added != len(expected) or report.problems:
            raise SystemExit(f"the evaluation set was not ingested whole: {report.problems}")
        threshold = index.min_score
        index.min_score = 0.0
        hits = hits_at_threshold = positives = rejected = negatives = 0
        best_scores: list[tuple[float, bool]] = []
        for line in (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            found = await index.search(["eval"], item["question"], k=5)
            top = found[0].score if found else 0.0
            if item["doc"] is None:
                negatives += 1
                rejected += top < threshold
                best_scores.append((top, False))
                continue
            positives += 1
            want = expected[item["doc"]]
            hits += any(p.doc == want for p in found)
            hits_at_threshold += any(p.doc == want and p.score >= threshold for p in found)
            best_scores.append((max((p.score for p in found if p.doc == want), default=0.0), True))
        index.min_score = threshold
        for t in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5):
            kept = sum(1 for s, pos in best_scores if pos and s >= t) / positives
            refused = sum(1 for s, pos in best_scores if not pos and s < t) / negatives
            print(f"threshold {t:.2f}: relevant passage kept for {kept:.0%} of questions, "
                  f"{refused:.0%} of off-topic questions get nothing", file=sys.stderr)
        return {"recall_at_5": hits_at_threshold / positives, "recall_at_5_unfiltered": hits / positives,
                "offtopic_rejected": rejected / negatives, "questions": positives}
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--pg-chunks", type=int, default=None, help="chunks for PostgreSQL (default: --chunks)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--ingest-child", nargs=2, metavar=("PDF", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_child:
        ingest_child(*args.ingest_child)
        return
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        workdir = Path(tmp)
        ingest = bench_ingest(args.pages, workdir)
        p50, p99 = asyncio.run(bench_sqlite_search(args.chunks, args.queries, workdir))
        print(f"sqlite search: p50 {p50:.2f} ms, p99 {p99:.2f} ms", file=sys.stderr)
        pg = None if args.no_postgres else asyncio.run(
            bench_postgres_search(args.pg_chunks or args.chunks, args.queries))
        retrieval = asyncio.run(bench_retrieval(workdir))
    fields = {
        "pages_per_s": f"{ingest['pages'] / ingest['seconds']:.0f}",
        "search_p50_ms": f"{p50:.2f}",
        "search_p99_ms": f"{p99:.2f}",
        "recall_at_5": f"{retrieval['recall_at_5']:.3f}",
        "rss_mb": f"{ingest['rss_mb']:.0f}",
        "recall_at_5_unfiltered": f"{retrieval['recall_at_5_unfiltered']:.3f}",
        "offtopic_rejected": f"{retrieval['offtopic_rejected']:.3f}",
    }
    if pg is not None:
        fields["pg_search_p50_ms"], fields["pg_search_p99_ms"] = f"{pg[0]:.2f}", f"{pg[1]:.2f}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
