"""Knowledge bases: the contract every index passes (memory, SQLite FTS5, PostgreSQL), ingestion of real files
through the real ``internvl-bot kb`` command, and the scoring that tells "nothing relevant" apart."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF
from PIL import Image

from adapters.cli import main
from bot.config import Settings
from bot.knowledge import Chunk, Document, KnowledgeStore, MemoryKnowledge, Source, open_index
from bot.knowledge.chunking import Chunker, clean, read_html, read_markdown
from bot.knowledge.dense import DenseKnowledge
from bot.knowledge.ingest import Ingester
from bot.knowledge.text import Stats, query_terms, score, terms
from bot.store import MemoryStore, SQLiteStore, Store
from tests.conftest import make_settings
from tests.embeddings_peer import EmbeddingsPeer

PUMP = Document("manuals", "/kb/pump-x200.pdf", "Pump X200 manual", "h1", "application/pdf", "a" * 64, 3)
ROUTER = Document("manuals", "/kb/router.md", "Router R5 guide", "h2", "text/markdown")
PRINTER = Document("support", "/kb/printer.md", "Printer P9 FAQ", "h3", "text/markdown")


async def _fill(kb: KnowledgeStore) -> None:
    await kb.put_document(PUMP, [
        Chunk("Before the first start, fill the pump housing with water and open the suction valve.", page=1),
        Chunk("The impeller must be cleaned every 500 operating hours; remove the front cover with a 10 mm key.",
              page=2),
        Chunk("Warranty: the X200 is covered for 24 months from the date of purchase.", page=3),
    ])
    await kb.put_document(ROUTER, [
        Chunk("Hold the reset button for ten seconds until the status light blinks amber.", heading="Factory reset"),
        Chunk("The guest network is isolated from the main network and has its own password.",
              heading="Wi-Fi > Guest network"),
    ])
    await kb.put_document(PRINTER, [Chunk("Paper jams: open tray 2, pull the sheet straight out, close the tray.")])


class KnowledgeContract:
    """Subclasses provide a ``kb`` fixture: an empty :class:`KnowledgeStore` with ``min_score`` at the default."""

    async def test_a_question_finds_its_passage_with_where_it_came_from(self, kb: KnowledgeStore) -> None:
        await _fill(kb)
        found = await kb.search(["manuals"], "How often should the impeller be cleaned?")
        assert found, "nothing found"
        best = found[0]
        assert (best.doc, best.title, best.page, best.base) == (PUMP.doc, PUMP.title, 2, "manuals")
        assert (best.blob, best.mime) == ("a" * 64, "application/pdf")
        assert "500 operating hours" in best.text
        assert 0 < best.score <= 1
        assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
        router = await kb.search(["manuals"], "factory reset of the router")
        assert router[0].heading == "Factory reset" and router[0].page is None

    async def test_an_unrelated_question_finds_nothing(self, kb: KnowledgeStore) -> None:
        await _fill(kb)
        assert await kb.search(["manuals"], "What is the capital of Australia?") == []
        assert await kb.search(["manuals"], "recipe for chocolate cake with strawberries") == []
        assert await kb.search(["manuals"], "") == []
        # the same words are found once a document holds them
        await kb.put_document(Document("manuals", "/kb/cake.md", "Cake", "h9"),
                              [Chunk("A chocolate cake recipe: bake with strawberries on top.")])
        assert (await kb.search(["manuals"], "recipe for chocolate cake with strawberries"))[0].doc == "/kb/cake.md"

    async def test_only_the_bases_asked_for_are_searched_and_k_is_respected(self, kb: KnowledgeStore) -> None:
        await _fill(kb)
        assert await kb.search(["manuals"], "paper jam in tray 2") == []
        assert (await kb.search(["support"], "paper jam in tray 2"))[0].doc == PRINTER.doc
        both = await kb.search(["manuals", "support"], "paper jam in tray 2")
        assert both[0].doc == PRINTER.doc
        assert await kb.search([], "paper jam") == []
        # the title counts as words of each chunk: all three pages of the pump manual match
        assert len(await kb.search(["manuals"], "pump X200", k=5)) == 3
        assert len(await kb.search(["manuals"], "pump X200", k=2)) == 2

    async def test_replacing_a_document_swaps_its_chunks_and_statistics(self, kb: KnowledgeStore) -> None:
        await _fill(kb)
        await kb.put_document(Document("manuals", PUMP.doc, "Pump X200 manual", "h1b", "application/pdf", "b" * 64, 1),
                              [Chunk("Winter storage: drain the pump completely before frost.", page=1)])
        assert await kb.search(["manuals"], "impeller cleaning interval operating hours") == []
        found = await kb.search(["manuals"], "store the pump over winter frost")
        assert (found[0].page, found[0].blob) == (1, "b" * 64)
        docs = {d.doc: d for d in await kb.documents("manuals")}
        assert set(docs) == {PUMP.doc, ROUTER.doc} and docs[PUMP.doc].content_hash == "h1b"
        summary = {b.name: b for b in await kb.bases()}
        assert (summary["manuals"].documents, summary["manuals"].chunks) == (2, 3)

    async def test_removing_documents_and_bases(self, kb: KnowledgeStore) -> None:
        await _fill(kb)
        assert await kb.remove_documents("manuals", [ROUTER.doc, "/kb/nothing.md"]) == 1
        assert await kb.search(["manuals"], "factory reset button amber light") == []
        assert await kb.search(["manuals"], "pump warranty months")
        assert await kb.remove_base("manuals") is True
        assert await kb.search(["manuals"], "pump warranty months") == []
        assert [b.name for b in await kb.bases()] == ["support"]
        assert await kb.remove_base("manuals") is False
        # what is left scores as before: the statistics forgot the removed chunks
        assert (await kb.search(["support"], "paper jam tray"))[0].score > 0.6

    async def test_chinese_and_japanese_questions_find_their_documents(self, kb: KnowledgeStore) -> None:
        await _fill(kb)
        await kb.put_document(Document("manuals", "/kb/pump-zh.md", "水泵说明书", "z1"), [
            Chunk("水泵的保修期为二十四个月，自购买之日起计算。", heading="保修"),
            Chunk("首次启动前，请向泵壳内注满水并打开吸入阀。", heading="启动"),
        ])
        await kb.put_document(Document("manuals", "/kb/router-ja.md", "ルーター設定", "j1"), [
            Chunk("リセットボタンを十秒間押し続けると、工場出荷時の設定に戻ります。", heading="初期化"),
        ])
        zh = await kb.search(["manuals"], "水泵保修期多长时间？")
        assert zh and zh[0].doc == "/kb/pump-zh.md" and zh[0].heading == "保修"
        ja = await kb.search(["manuals"], "工場出荷時の設定に戻す方法")
        assert ja and ja[0].doc == "/kb/router-ja.md"
        assert (await kb.search(["manuals"], "吸入阀"))[0].heading == "启动"
        two = await kb.search(["manuals"], "泵壳")  # one word of two characters: no trigram to look up
        assert two and two[0].heading == "启动"
        assert await kb.search(["manuals"], "天气预报") == []

    async def test_accents_and_case_do_not_matter(self, kb: KnowledgeStore) -> None:
        await kb.put_document(Document("fr", "/kb/cafe.md", "Machine à café", "c1"),
                              [Chunk("Détartrez la machine à café tous les trois mois avec le produit fourni.")])
        found = await kb.search(["fr"], "DETARTRER machine a cafe")
        assert found and found[0].doc == "/kb/cafe.md"
        assert (await kb.search(["fr"], "détartrez café"))[0].doc == "/kb/cafe.md"

    async def test_sources_are_kept_once_in_order(self, kb: KnowledgeStore) -> None:
        await kb.add_sources("docs", [Source("docs", "/srv/manuals"), Source("docs", "/srv/faq.md")])
        await kb.add_sources("docs", [Source("docs", "/srv/manuals")])
        assert [s.location for s in await kb.sources("docs")] == ["/srv/manuals", "/srv/faq.md"]
        assert [b.name for b in await kb.bases()] == ["docs"]
        assert await kb.remove_source("docs", "/srv/manuals") is True
        assert await kb.remove_source("docs", "/srv/manuals") is False
        assert [s.location for s in await kb.sources("docs")] == ["/srv/faq.md"]
        assert await kb.sources("other") == []


# -- dense retrieval ---------------------------------------------------------------------------------

#: "How often should I clean the pump?" in Portuguese: not one word of it is in the English manuals.
PT_QUESTION = "Com que frequência devo limpar a bomba?"

Opener = Callable[..., KnowledgeStore]


@pytest.fixture
def peer() -> Iterator[EmbeddingsPeer]:
    server = EmbeddingsPeer().start()
    yield server
    server.stop()


def dense_settings(tmp_path: Path, url: str, **more: Any) -> Settings:
    return make_settings(tmp_path, knowledge={"bases": {"manuals": {"language": "en"}},
                                              "embeddings": {"url": url, "model": "lexicon-9", **more}})


class DenseContract:
    """Subclasses provide ``opener``: ``opener(settings)`` is ``open_index(settings, store)`` on one empty store,
    the same on every call (so a lexical and a dense view of the same bases can be compared)."""

    async def test_a_portuguese_question_finds_the_english_manual_only_with_dense_retrieval(
            self, opener: Opener, peer: EmbeddingsPeer, tmp_path: Path) -> None:
        lexical = opener(make_settings(tmp_path, knowledge={"bases": {"manuals": {"language": "en"}}}))
        await _fill(lexical)
        assert await lexical.search(["manuals"], PT_QUESTION) == []
        kb = opener(dense_settings(tmp_path, peer.url, batch=2))
        assert isinstance(kb, DenseKnowledge)
        assert await kb.fill("manuals") == 5  # the chunks indexed before the endpoint was configured
        assert await kb.fill("manuals") == 0
        assert [len(r["input"]) for r in peer.requests] == [2, 2, 1]  # knowledge.embeddings.batch
        found = await kb.search(["manuals"], PT_QUESTION)
        assert found and (found[0].doc, found[0].page) == (PUMP.doc, 2)
        assert 0.6 <= found[0].score <= 1
        assert all(p.base == "manuals" for p in found)
        # the lexical side still counts: an English question finds the same passage first
        assert (await kb.search(["manuals"], "How often should the impeller be cleaned?"))[0].page == 2
        # and "nothing relevant" stays: neither its words nor its meaning are in the base
        assert await kb.search(["manuals"], "Qual é a capital da França?") == []

    async def test_vectors_go_with_their_chunks(self, opener: Opener, peer: EmbeddingsPeer, tmp_path: Path) -> None:
        kb = opener(dense_settings(tmp_path, peer.url))
        assert isinstance(kb, DenseKnowledge)
        await _fill(kb)
        await kb.fill("manuals")
        await kb.put_document(PUMP, [Chunk("Bomba: limpar o rotor a cada 500 horas.", page=1)])
        assert [text for _, text in await kb.missing_vectors("manuals", "lexicon-9", 10)] == \
            ["Pump X200 manual\nBomba: limpar o rotor a cada 500 horas."]
        await kb.fill("manuals")
        assert (await kb.search(["manuals"], PT_QUESTION))[0].text.startswith("Bomba")
        await kb.remove_documents("manuals", [PUMP.doc])
        assert all(p.doc != PUMP.doc for p in await kb.nearest(["manuals"], "lexicon-9", [1.0] + [0.0] * 8, 10))
        # another model's vectors are not this one's: all of them are missing for it
        assert len(await kb.missing_vectors("manuals", "another-model", 10)) == 2

    async def test_an_endpoint_down_gives_lexical_results_and_one_warning(
            self, opener: Opener, peer: EmbeddingsPeer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        kb = opener(dense_settings(tmp_path, peer.url))
        await _fill(kb)
        await kb.fill("manuals")
        peer.failing = True
        with caplog.at_level(logging.WARNING, logger="bot.knowledge.dense"):
            for _ in range(3):
                found = await kb.search(["manuals"], "How often should the impeller be cleaned?")
                assert found and found[0].page == 2
            assert await kb.search(["manuals"], PT_QUESTION) == []
        warnings = [r for r in caplog.records if r.name == "bot.knowledge.dense"]
        assert len(warnings) == 1 and "HTTP 503" in warnings[0].getMessage()
        peer.stop()  # nothing listening at all: the same
        assert (await kb.search(["manuals"], "factory reset of the router"))[0].heading == "Factory reset"


class TestMemoryKnowledge(KnowledgeContract, DenseContract):
    @pytest.fixture
    async def kb(self, tmp_path: Path) -> KnowledgeStore:
        index = open_index(make_settings(tmp_path), MemoryStore())
        assert isinstance(index, MemoryKnowledge)
        return index

    @pytest.fixture
    def opener(self) -> Opener:
        store = MemoryStore()
        return lambda settings: open_index(settings, store)


class TestSQLiteKnowledge(KnowledgeContract, DenseContract):
    @pytest.fixture
    async def kb(self, tmp_path: Path) -> AsyncIterator[KnowledgeStore]:
        store = SQLiteStore(tmp_path / "bot.sqlite3")
        await store.open()
        yield open_index(make_settings(tmp_path), store)
        await store.close()

    @pytest.fixture
    async def opener(self, tmp_path: Path) -> AsyncIterator[Opener]:
        store = SQLiteStore(tmp_path / "bot.sqlite3")
        await store.open()
        yield lambda settings: open_index(settings, store)
        await store.close()

    async def test_the_index_lives_in_the_store_file_and_survives_reopening(self, tmp_path: Path) -> None:
        store = SQLiteStore(tmp_path / "bot.sqlite3")
        await store.open()
        await _fill(open_index(make_settings(tmp_path), store))
        await store.close()
        store = SQLiteStore(tmp_path / "bot.sqlite3")
        await store.open()
        try:
            tables = {r[0] for r in store.db.conn.execute("SELECT name FROM sqlite_master")}
            assert {"kb_chunks", "kb_fts", "kb_cjk", "kb_documents", "kb_sources", "conversations"} <= tables
            assert (await open_index(make_settings(tmp_path), store).search(["support"], "paper jam"))[0].doc == \
                PRINTER.doc
        finally:
            await store.close()


class TestPostgresKnowledge(KnowledgeContract, DenseContract):
    """The same contract on a real PostgreSQL 15 (tests/postgres_cluster.py), a fresh database per test."""

    @pytest.fixture
    async def kb(self, postgres: Any, tmp_path: Path) -> AsyncIterator[KnowledgeStore]:
        from bot.store.postgres.store import PostgresStore

        store = PostgresStore(postgres.database(), min_size=1, max_size=2)
        await store.open()
        settings = make_settings(tmp_path, knowledge={"bases": {"manuals": {"language": "en"}}})
        yield open_index(settings, store)
        await store.close()

    @pytest.fixture
    async def opener(self, postgres: Any) -> AsyncIterator[Opener]:
        from bot.store.postgres.store import PostgresStore

        store = PostgresStore(postgres.database(), min_size=1, max_size=2)
        await store.open()
        yield lambda settings: open_index(settings, store)
        await store.close()

    async def test_the_base_language_stems_its_words(self, kb: KnowledgeStore) -> None:
        await _fill(kb)
        # "cleaning" and "impellers" meet "cleaned" and "impeller" only through English stemming
        found = await kb.search(["manuals"], "impellers cleaning")
        assert found and found[0].page == 2


# -- scoring ------------------------------------------------------------------------------------


def test_terms_fold_accents_case_and_cut_cjk_into_pairs() -> None:
    assert terms("Café ÜBERGRÖSSE x200") == ["cafe", "ubergross", "x200"]  # a final e goes (stem)
    assert terms("Cleaning the cleaned pumps; batteries") == ["clean", "the", "clean", "pump", "battery"]
    assert terms("水泵的保修") == ["水泵", "泵的", "的保", "保修"]
    assert terms("ポンプ") == ["ポン", "ンプ"]  # voiced kana keep their marks
    assert query_terms("How do I reset my router?") == ["reset", "router"]
    assert query_terms("how do I") == ["how", "do", "i"]  # nothing but question words: kept


def test_score_is_the_share_of_the_query_information_a_chunk_holds() -> None:
    stats = Stats(chunks=100, length=2000, df={"pump": 10, "warranty": 2, "months": 20})
    full = score(["pump", "warranty"], ["pump", "warranty", "covered"] * 6, stats)
    half = score(["pump", "warranty"], ["pump"] * 3 + ["other"] * 15, stats)
    unknown = score(["pump", "zeppelin"], ["pump"] * 3 + ["other"] * 15, stats)
    assert full > 0.9 and 0.2 < half < 0.8 and unknown < half
    assert score(["zeppelin"], ["pump"], stats) == 0.0


# -- reading documents --------------------------------------------------------------------------


def test_markdown_chunks_carry_their_heading_path(tmp_path: Path) -> None:
    text = "# Router R5\n\nIntro.\n\n## Wi-Fi\n\n### Guest network\n\nIsolated from the main network.\n\n" \
           "![the reset button](img/reset.png)\n"
    parsed = read_markdown(text, tmp_path / "r5.md", Chunker(200, 20))
    assert parsed.title == "Router R5"
    assert [(c.heading, " ".join(c.text.split())) for c in parsed.chunks] == [
        ("Router R5", "Intro."), ("Router R5 > Wi-Fi > Guest network", "Isolated from the main network. the reset button")]
    assert [(i.path, i.alt) for i in parsed.images] == [((tmp_path / "img/reset.png").resolve(), "the reset button")]


def test_html_keeps_headings_and_drops_scripts(tmp_path: Path) -> None:
    page = ("<html><head><title>Printer P9 help</title><script>var x = 'no';</script></head><body><nav>Home</nav>"
            "<h1>Printer P9</h1><p>Welcome.</p><h2>Paper jams</h2><p>Open tray 2 &amp; pull the sheet.</p>"
            "<img src='jam.png' alt='tray 2 opened'></body></html>")
    parsed = read_html(page, tmp_path / "p9.html", Chunker(200, 20))
    assert parsed.title == "Printer P9 help"
    assert [(c.heading, c.text) for c in parsed.chunks] == [
        ("Printer P9", "Welcome."), ("Printer P9 > Paper jams", "Open tray 2 & pull the sheet.")]
    assert parsed.images[0].alt == "tray 2 opened" and "pull the sheet" in parsed.images[0].context


# -- the kb command on real files ---------------------------------------------------------------


def make_pdf(path: Path, pages: list[str], *, title: str = "", password: str = "") -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    if title:
        pdf.set_title(title)
    if password:
        pdf.set_encryption(owner_password=password, user_password=password)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nlogging:\n  level: WARNING\n", encoding="utf-8")
    return path


def kb(config: Path, *args: str) -> int:
    return main(["--config", str(config), "kb", *args])


def search(config: Path, capsys: pytest.CaptureFixture[str], base: str, query: str, *more: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert kb(config, "search", base, query, "--json", *more) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "img").mkdir(parents=True)
    make_pdf(folder / "pump-x200.pdf", [
        "Pump X200 installation. Mount the pump on a level concrete base and connect the suction pipe.",
        "Maintenance. The impeller must be cleaned every 500 operating hours. Remove the front cover first.",
        "Warranty. The X200 is covered for 24 months from the date of purchase; keep the receipt.",
    ], title="Pump X200 manual")
    (folder / "router.md").write_text(
        "# Router R5 guide\n\n## Factory reset\n\nHold the reset button for ten seconds until the status light "
        "blinks amber.\n\n![reset button on the back panel](img/back.png)\n\n## Guest network\n\nThe guest "
        "network is isolated and has its own password.\n", encoding="utf-8")
    (folder / "printer.html").write_text(
        "<html><head><title>Printer P9 FAQ</title></head><body><h1>Paper jams</h1><p>Open tray 2, pull the "
        "sheet straight out, close the tray.</p></body></html>", encoding="utf-8")
    (folder / "notes.txt").write_text("Service hotline\n\nCall the service hotline on weekdays from 8 to 18.\n",
                                      encoding="utf-8")
    (folder / "pump-zh.md").write_text("# 水泵说明书\n\n## 保修\n\n水泵的保修期为二十四个月，自购买之日起计算。\n",
                                       encoding="utf-8")
    Image.new("RGB", (40, 30), "red").save(folder / "img" / "back.png")
    Image.new("RGB", (40, 30), "blue").save(folder / "img" / "wiring-diagram.png")
    (folder / "img" / "wiring-diagram.png.txt").write_text("Terminal block wiring of the controller: L, N, PE.",
                                                          encoding="utf-8")
    return folder


def test_kb_add_indexes_every_format_and_search_prints_json(config: Path, docs: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert kb(config, "add", "manuals", str(docs)) == 0
    out = capsys.readouterr().out
    assert "manuals: 7 added, 0 updated, 0 unchanged, 0 removed, 0 problem(s) (3 pages" in out
    found = search(config, capsys, "manuals", "how often do I need to clean the impeller?")
    assert found[0]["doc"] == str(docs / "pump-x200.pdf") and found[0]["page"] == 2
    assert found[0]["title"] == "Pump X200 manual" and set(found[0]) == {"doc", "title", "page", "score", "text"}
    assert search(config, capsys, "manuals", "guarantee period months purchase receipt")[0]["page"] == 3
    assert search(config, capsys, "manuals", "router factory reset")[0]["doc"] == str(docs / "router.md")
    assert search(config, capsys, "manuals", "paper jam tray")[0]["title"] == "Printer P9 FAQ"
    assert search(config, capsys, "manuals", "service hotline weekdays")[0]["doc"] == str(docs / "notes.txt")
    assert search(config, capsys, "manuals", "水泵保修期多长")[0]["doc"] == str(docs / "pump-zh.md")
    # images: by caption, by the alt text and paragraph of the page showing them, by file name
    assert search(config, capsys, "manuals", "controller terminal wiring")[0]["doc"] == \
        str(docs / "img" / "wiring-diagram.png")
    assert search(config, capsys, "manuals", "back panel reset button picture")[0]["doc"] in (
        str(docs / "img" / "back.png"), str(docs / "router.md"))
    assert search(config, capsys, "manuals", "reset button back panel", "-k", "5")[1]["doc"] in (
        str(docs / "img" / "back.png"), str(docs / "router.md"))
    assert search(config, capsys, "manuals", "What is the capital of Australia?") == []
    assert kb(config, "search", "manuals", "impeller cleaning") == 0
    assert "Pump X200 manual p.2" in capsys.readouterr().out
    # a second add of the same files does nothing
    assert kb(config, "add", "manuals", str(docs)) == 0
    assert "0 added, 0 updated, 7 unchanged" in capsys.readouterr().out
    assert kb(config, "list") == 0
    listing = capsys.readouterr().out
    assert listing.startswith("manuals: 7 documents,") and str(docs) in listing


async def test_pdfs_and_images_are_kept_in_blob_storage_past_a_purge(config: Path, docs: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = SQLiteStore(settings.store_path, clock=lambda: 1000.0)
    await store.open()
    try:
        index = open_index(settings, store)
        report = await Ingester(index, store, settings.knowledge, progress=False).add("m", [str(docs)])
        assert report.added == 7
        by_doc = {d.doc: d for d in await index.documents("m")}
        pdf = by_doc[str(docs / "pump-x200.pdf")]
        assert (pdf.mime, pdf.pages) == ("application/pdf", 3)
        assert await store.attachment_data(pdf.blob) == (docs / "pump-x200.pdf").read_bytes()
        image = by_doc[str(docs / "img" / "wiring-diagram.png")]
        assert image.mime == "image/png" and image.blob
        store._clock = lambda: 1e9  # everything is old now: unused attachments would go
        await store.purge(older_than=1e9)
        assert await store.attachment_data(pdf.blob) == (docs / "pump-x200.pdf").read_bytes()
        assert await store.attachment_data(image.blob)
        assert by_doc[str(docs / "router.md")].blob == ""
    finally:
        await store.close()


def test_bad_files_are_one_line_each_and_the_rest_is_indexed(config: Path, tmp_path: Path, docs: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    make_pdf(bad / "secret.pdf", ["Confidential pump pricing."], password="s3cret")
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage" * 3)
    (bad / "empty.md").write_bytes(b"")
    (bad / "binary.md").write_bytes(bytes(range(256)) * 8)
    (bad / "copy-of-router.md").write_bytes((docs / "router.md").read_bytes())
    (bad / "good.md").write_text("# Valve V1\n\nThe valve V1 opens at 2 bar.\n", encoding="utf-8")
    assert kb(config, "add", "m", str(docs / "router.md")) == 0
    assert kb(config, "add", "m", str(bad), str(tmp_path / "missing")) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    reasons = {Path(line.split(": ", 1)[0].removeprefix("skipped ")).name: line for line in lines}
    assert set(reasons) == {"secret.pdf", "broken.pdf", "empty.md", "binary.md", "copy-of-router.md", "missing"}
    assert "encrypted" in reasons["secret.pdf"] and "not a readable PDF" in reasons["broken.pdf"]
    assert "empty file" in reasons["empty.md"] and "binary" in reasons["binary.md"]
    assert "duplicate of" in reasons["copy-of-router.md"] and "no such file" in reasons["missing"]
    assert "1 added" in captured.out and "6 problem(s)" in captured.out
    assert search(config, capsys, "m", "valve opening pressure bar")[0]["doc"] == str(bad / "good.md")


def test_a_pdf_longer_than_max_pages_is_cut_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nknowledge:\n  max_pages: 2\n", encoding="utf-8")
    long_pdf = make_pdf(tmp_path / "long.pdf", [f"Page {n} talks about topic{n}." for n in range(1, 6)])
    assert kb(config, "add", "m", str(long_pdf)) == 0
    captured = capsys.readouterr()
    assert "only the first 2 of 5 pages indexed (knowledge.max_pages)" in captured.err
    assert search(config, capsys, "m", "topic2")[0]["page"] == 2
    assert search(config, capsys, "m", "topic4") == []


def test_sync_rereads_changes_drops_vanished_files_and_keeps_a_failed_one(
        config: Path, docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kb(config, "add", "manuals", str(docs)) == 0
    (docs / "notes.txt").write_text("Service hotline\n\nThe hotline now also answers on Saturdays.\n",
                                    encoding="utf-8")
    (docs / "printer.html").unlink()
    # a PDF that no longer reads: its previous version keeps serving
    (docs / "pump-x200.pdf").write_bytes(b"%PDF-1.4 truncated")
    capsys.readouterr()
    assert kb(config, "sync", "manuals") == 0
    captured = capsys.readouterr()
    assert "0 added, 1 updated, 4 unchanged, 1 removed, 1 problem(s)" in captured.out
    assert "the previous version stays indexed" in captured.err
    assert search(config, capsys, "manuals", "hotline saturday")[0]["doc"] == str(docs / "notes.txt")
    assert search(config, capsys, "manuals", "paper jam tray") == []
    assert search(config, capsys, "manuals", "impeller cleaning hours")[0]["page"] == 2


def test_sync_reads_the_configured_sources_and_remove_forgets_one(tmp_path: Path, docs: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nknowledge:\n  bases:\n    help:\n      sources:\n"
                      f"        - {docs / 'router.md'}\n        - {docs / 'notes.txt'}\n", encoding="utf-8")
    assert kb(config, "list") == 0
    assert capsys.readouterr().out.startswith("help: 0 documents, 0 chunks, last sync never; sources: ")
    assert kb(config, "sync", "help") == 0
    # the router guide's image is indexed too, though outside the sources: the guide shows it
    assert "3 added" in capsys.readouterr().out
    assert kb(config, "add", "help", str(docs / "printer.html")) == 0
    assert kb(config, "remove", "help", str(docs / "router.md")) == 0
    assert "1 document(s) removed" in capsys.readouterr().out
    assert search(config, capsys, "help", "guest network password") == []
    assert kb(config, "remove", "help", str(docs / "nothing.md")) == 1
    assert kb(config, "sync", "nobase") == 2
    assert "has no sources" in capsys.readouterr().err


async def test_an_interrupted_add_resumes_where_it_stopped(tmp_path: Path, docs: Path) -> None:
    settings = make_settings(tmp_path)
    store = MemoryStore()
    index = open_index(settings, store)
    put = index.put_document
    calls = 0

    async def interrupted(document: Document, chunks: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # Ctrl+C while the third document is written
        await put(document, chunks)

    index.put_document = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        await Ingester(index, store, settings.knowledge, progress=False).add("m", [str(docs)])
    assert len(await index.documents("m")) == 2
    index.put_document = put  # type: ignore[method-assign]
    report = await Ingester(index, store, settings.knowledge, progress=False).sync("m")
    assert (report.added, report.unchanged) == (5, 2)


async def test_progress_shows_documents_pages_and_chunks(tmp_path: Path, docs: Path) -> None:
    import io

    settings = make_settings(tmp_path)
    store: Store = MemoryStore()
    out = io.StringIO()
    await Ingester(open_index(settings, store), store, settings.knowledge, out=out, progress=True).add("m", [str(docs)])
    shown = out.getvalue()
    assert "kb m" in shown and "7/7" in shown and "doc/s" in shown and "pages=3" in shown and "chunks=" in shown



def test_kb_add_with_the_endpoint_down_writes_the_lexical_index_and_sync_fills_the_embeddings(
        tmp_path: Path, peer: EmbeddingsPeer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_EMBEDDINGS_KEY", "sk-embeddings-secret")
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nlogging:\n  level: WARNING\nknowledge:\n  embeddings:\n"
                      f"    url: {peer.url}\n    model: lexicon-9\n    api_key_env: TEST_EMBEDDINGS_KEY\n",
                      encoding="utf-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.md").write_text("# Pump X200\n\nClean the impeller of the pump every 500 hours.\n", encoding="utf-8")
    (docs / "router.md").write_text("# Router R5\n\nHold the reset button for ten seconds.\n", encoding="utf-8")
    peer.failing = True
    assert kb(config, "add", "manuals", str(docs)) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("embeddings:")]
    assert len(lines) == 1 and "HTTP 503" in lines[0] and "kb sync manuals" in lines[0]
    # the lexical index is written and searched; the Portuguese question needs the embeddings
    assert search(config, capsys, "manuals", "how often to clean the impeller")[0]["doc"].endswith("pump.md")
    assert search(config, capsys, "manuals", PT_QUESTION) == []
    peer.failing = False
    assert kb(config, "sync", "manuals") == 0
    assert "2 unchanged, 0 removed, 0 problem(s) (0 pages, 0 chunks, 2 embedded" in capsys.readouterr().out
    assert search(config, capsys, "manuals", PT_QUESTION)[0]["doc"].endswith("pump.md")
    assert peer.requests[-1]["_auth"] == "Bearer sk-embeddings-secret"
    assert peer.requests[-1]["model"] == "lexicon-9"
    assert "sk-embeddings-secret" not in capsys.readouterr().err + err


async def test_a_failing_endpoint_warns_once_a_minute_and_at_once_after_it_answered_again(
        peer: EmbeddingsPeer, caplog: pytest.LogCaptureFixture) -> None:
    from bot.knowledge.dense import Embedder

    now = [0.0]
    kb = DenseKnowledge(MemoryKnowledge(), Embedder(peer.url, "lexicon-9"), min_similarity=0.6, clock=lambda: now[0])
    await _fill(kb)  # type: ignore[arg-type]
    peer.failing = True

    async def warnings_after(seconds: float, searches: int) -> list[str]:
        caplog.clear()
        now[0] += seconds
        with caplog.at_level(logging.WARNING, logger="bot.knowledge.dense"):
            for _ in range(searches):
                assert (await kb.search(["manuals"], "impeller cleaned"))[0].page == 2
        return [r.getMessage() for r in caplog.records if r.name == "bot.knowledge.dense"]

    assert len(await warnings_after(0, 3)) == 1
    assert await warnings_after(30, 2) == []
    [late] = await warnings_after(31, 1)
    assert "4 more search(es)" in late  # held back since the first warning: 2 in its minute, 2 after
    peer.failing = False
    assert await warnings_after(1, 1) == []
    peer.failing = True
    assert len(await warnings_after(1, 1)) == 1  # a new outage is said at once


def scanned_pdf(path: Path, pages: list[str | None]) -> Path:
    """A PDF whose ``None`` pages are scans: a picture of a page, no text layer; the others have text."""
    picture = path.with_suffix(".scan.png")
    Image.new("RGB", (620, 877), "white").save(picture)
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text is None:
            pdf.image(str(picture), x=0, y=0, w=210, h=297)
        else:
            pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    picture.unlink()
    return path


@pytest.fixture
def echo_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nlogging:\n  level: WARNING\nengine:\n  kind: echo\n",
                    encoding="utf-8")
    return path


def test_a_scanned_pdf_names_ocr_and_a_demo_model_is_refused_for_it(config: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pdf = scanned_pdf(tmp_path / "scan.pdf", [None, None])
    assert kb(config, "add", "manuals", str(pdf)) == 1
    err = capsys.readouterr().err
    assert "no text found (a scanned PDF without a text layer?)" in err and "kb add --ocr" in err
    # --ocr with the default engine, the random demo model: one line, and no model built for it
    assert kb(config, "add", "manuals", str(pdf), "--ocr") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "kb add --ocr: engine.transformers.model is empty (the random demo model)" in err
    assert not (tmp_path / "data" / "demo-model").exists()


def test_kb_add_ocr_reads_scanned_pages_with_the_engine_and_sync_remembers(
        echo_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    intro = "Pump X200 service manual. This manual covers installation and maintenance of the pump."
    (tmp_path / "docs").mkdir()
    pdf = scanned_pdf(tmp_path / "docs" / "scan.pdf", [intro, None])
    # without --ocr: the text layer is indexed, the scanned page is named
    assert kb(echo_config, "add", "manuals", str(tmp_path / "docs")) == 0
    captured = capsys.readouterr()
    assert "1 of 2 pages have no text layer (scanned?)" in captured.err and "kb add --ocr" in captured.err
    assert "(2 pages, 1 chunks" in captured.out
    # with it, on the same source: read again (not "unchanged"), the scanned page by the engine
    assert kb(echo_config, "add", "manuals", str(tmp_path / "docs"), "--ocr") == 0
    assert "0 added, 1 updated, 0 unchanged, 0 removed, 0 problem(s) (2 pages, 1 read by OCR, 2 chunks" in \
        capsys.readouterr().out
    found = search(echo_config, capsys, "manuals", "read all the text in this page", "--min-score", "0")
    [scan] = [f for f in found if f["page"] == 2]
    # what the engine returned for page 2 (the echo engine names the page image it was given)
    assert "[page-2: " in scan["text"] and "echo: Read all the text in this page" in scan["text"]
    [first] = search(echo_config, capsys, "manuals", "pump service manual installation maintenance")
    assert first["page"] == 1 and first["text"] == intro
    assert kb(echo_config, "list") == 0
    assert f"sources: {tmp_path / 'docs'} (ocr)" in capsys.readouterr().out
    # a third page, scanned: `kb sync` reads it the same way without being told
    scanned_pdf(pdf, [intro, None, None])
    assert kb(echo_config, "sync", "manuals") == 0
    assert "0 added, 1 updated, 0 unchanged, 0 removed, 0 problem(s) (3 pages, 2 read by OCR" in \
        capsys.readouterr().out
    found = search(echo_config, capsys, "manuals", "read all the text in this page", "--min-score", "0", "-k", "10")
    assert {f["page"] for f in found if "echo: Read all the text" in f["text"]} == {2, 3}
    assert any("[page-3: " in f["text"] for f in found if f["page"] == 3)
    # a new scanned file under the source, added without the flag: read with the engine too (not an error)
    scanned_pdf(tmp_path / "docs" / "more.pdf", [None])
    assert kb(echo_config, "add", "manuals", str(tmp_path / "docs")) == 0
    assert "1 added, 0 updated, 1 unchanged, 0 removed, 0 problem(s) (1 pages, 1 read by OCR" in \
        capsys.readouterr().out


async def test_ocr_with_the_tiny_transformers_internvl(demo_model: Path, tmp_path: Path) -> None:
    """The transformers engine reads the rendered page: the tiny random InternVL's reading is noise, but it is
    what goes into the chunk, with the page number."""
    from bot.config import GenerationSettings, TransformersSettings
    from bot.engines.transformers import TransformersEngine
    from bot.knowledge.ocr import EngineReader

    settings = make_settings(tmp_path)
    store = MemoryStore()
    await store.open()
    index = open_index(settings, store)
    readings: list[str] = []

    class Kept(EngineReader):
        async def read_page(self, image: Any, *, page: int, name: str) -> str:
            readings.append(await super().read_page(image, page=page, name=name))
            return readings[-1]

    reader = Kept(TransformersEngine(TransformersSettings(), model_path=str(demo_model)), GenerationSettings(),
                  max_new_tokens=12)
    bar = io.StringIO()
    ingester = Ingester(index, store, settings.knowledge, ocr=reader, out=bar, progress=True)
    (tmp_path / "docs").mkdir()
    scanned_pdf(tmp_path / "docs" / "scan.pdf", [None])
    try:
        report = await ingester.add("manuals", [str(tmp_path / "docs")], ocr=True)
    finally:
        await reader.close()
    assert report.ocr_pages == 1 and reader.pages == 1 and readings and readings[0]
    assert "ocr=1" in bar.getvalue()  # the progress bar counts the pages read by OCR
    [document] = await index.documents("manuals")
    assert document.pages == 1 and (await index.sources("manuals"))[0].kind == "ocr"
    index.min_score = 0.0
    [found] = await index.search(["manuals"], readings[0], k=1)
    assert found.page == 1 and found.text == Chunker().split(clean(readings[0]))[0]


def test_ocr_with_an_engine_that_cannot_answer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nlogging:\n  level: WARNING\nengine:\n  kind: openai_http\n"
                      "  openai_http:\n    base_url: http://127.0.0.1:9/v1\n    retries: 0\n", encoding="utf-8")
    pdf = scanned_pdf(tmp_path / "scan.pdf", [None])
    assert kb(config, "add", "manuals", str(pdf), "--ocr") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "kb --ocr: the engine (engine.kind: openai_http) cannot read pages: " in err
    assert "add the files without --ocr" in err


def test_migrate_copies_the_knowledge_bases_to_postgres(tmp_path: Path, docs: Path, echo_config: Path, postgres: Any,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite -> PostgreSQL: sources (an --ocr one stays one), documents, chunks and vectors; the bases answer the
    same on PostgreSQL without `kb add` again, and a second copy doubles nothing."""
    import asyncio

    import numpy as np

    from bot.knowledge.postgres import PostgresKnowledge
    from bot.knowledge.sqlite import SQLiteKnowledge
    from bot.store.postgres.store import PostgresStore

    (tmp_path / "scans").mkdir()
    scanned_pdf(tmp_path / "scans" / "scan.pdf", [None])
    assert kb(echo_config, "add", "manuals", str(docs)) == 0
    assert kb(echo_config, "add", "manuals", str(tmp_path / "scans"), "--ocr") == 0
    questions = ["how often do I need to clean the impeller?", "router factory reset", "水泵保修期多长",
                 "controller terminal wiring", "read all the text in this page"]
    before = [search(echo_config, capsys, "manuals", q) for q in questions]
    unit = np.zeros(8, dtype=np.float32)
    unit[3] = 1.0

    async def embed() -> int:  # vectors as `kb add` leaves them with an embeddings endpoint
        lite = SQLiteStore(tmp_path / "data" / "internvl-bot.sqlite3", tmp_path / "data" / "attachments")
        await lite.open()
        try:
            index = SQLiteKnowledge(lite)
            missing = await index.missing_vectors("manuals", "bge-m3", 1000)
            await index.put_vectors("bge-m3", [(cid, (unit if n == 0 else np.roll(unit, n)).tolist())
                                               for n, (cid, _) in enumerate(missing)])
            return len(missing)
        finally:
            await lite.close()

    vectors = asyncio.run(embed())
    url = postgres.database()
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", url)
    capsys.readouterr()
    assert main(["--config", str(echo_config), "migrate", "--to", "postgres"]) == 0
    out = capsys.readouterr().out
    assert "kb_sources 2 new, 0 already there; kb_documents 8 new, 0 already there" in out, out
    assert f"kb_vectors {vectors} new, 0 already there" in out
    assert main(["--config", str(echo_config), "migrate", "--to", "postgres"]) == 0  # again: nothing doubled
    out = capsys.readouterr().out
    assert f"kb_documents 0 new, 8 already there; kb_chunks 0 new, {vectors} already there; kb_vectors 0 new, " \
           f"{vectors} already there" in out, out
    # a document changed in SQLite since (kb sync there): copied again, replacing the first copy
    (docs / "notes.txt").write_text("Service hotline\n\nCall the service hotline on weekdays from 9 to 17.\n",
                                    encoding="utf-8")
    assert kb(echo_config, "sync", "manuals") == 0
    capsys.readouterr()
    assert main(["--config", str(echo_config), "migrate", "--to", "postgres"]) == 0
    assert "kb_documents 1 new, 7 already there" in capsys.readouterr().out

    on_postgres = tmp_path / "postgres.yaml"
    on_postgres.write_text(echo_config.read_text() + "store:\n  backend: postgres\n", encoding="utf-8")
    after = [search(on_postgres, capsys, "manuals", q) for q in questions]
    assert [[(f["doc"], f["page"]) for f in found][:1] for found in after] == \
        [[(f["doc"], f["page"]) for f in found][:1] for found in before]
    assert "from 9 to 17" in search(on_postgres, capsys, "manuals", "service hotline weekdays")[0]["text"]
    assert after[-1] and "[page-1: " in after[-1][0]["text"]  # the page read by OCR, copied as read
    assert kb(on_postgres, "list") == 0
    listed = capsys.readouterr().out
    assert f"manuals: 8 documents, {vectors} chunks" in listed and f"{tmp_path / 'scans'} (ocr)" in listed

    async def nearest() -> list[Any]:
        pg = PostgresStore(url)
        await pg.open()
        try:
            return await PostgresKnowledge(pg).nearest(["manuals"], "bge-m3", unit.tolist(), 1)
        finally:
            await pg.close()

    [closest] = asyncio.run(nearest())
    assert closest.score > 0.99  # the vector of the first chunk, copied as it was
