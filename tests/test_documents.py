from __future__ import annotations

import pytest
from fpdf import FPDF

from bot.conversation.tables import markdown_tables, to_csv, to_json
from bot.errors import EncryptedDocument, UnreadableDocument
from bot.media.documents import read_pdf
from bot.media.images import grid_for, tile_count


def invoice_pdf(pages: int = 1, encrypt: bool = False) -> bytes:
    pdf = FPDF()
    if encrypt:
        pdf.set_encryption(owner_password="owner", user_password="user")
    for page in range(pages):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(0, 10, f"INVOICE INV-2026-{page:04d}   Date 2026-11-03   Due 2026-12-03", new_x="LMARGIN", new_y="NEXT")
        for line in range(5):
            pdf.cell(0, 8, f"Item {line}  qty {line + 1}  price {10 * (line + 1)}.00 EUR", new_x="LMARGIN", new_y="NEXT")
        pdf.cell(0, 10, "TOTAL 150.00 EUR", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def test_pages_are_rendered_at_the_size_their_tiles_need_and_text_is_read() -> None:
    doc = read_pdf(invoice_pdf(2), max_tiles=12)
    assert doc.total_pages == 2
    assert not doc.truncated
    page = doc.pages[0]
    assert "INVOICE INV-2026-0000" in page.text
    assert "TOTAL 150.00 EUR" in page.text
    height, width = page.image.shape[:2]
    cols, rows = grid_for(round(595 * 200 / 72), round(842 * 200 / 72), max_num=12)
    assert max(abs(width - 448 * cols), abs(height - 448 * rows)) <= 448  # close to the grid, never far above
    assert width <= 448 * cols + 1
    assert height <= 448 * rows + 1


def test_resolution_follows_the_budget() -> None:
    roomy = read_pdf(invoice_pdf(4), max_tiles=24, tiles_for=lambda pages: 24)
    tight = read_pdf(invoice_pdf(4), max_tiles=24, tiles_for=lambda pages: 8000 // pages // 258)
    assert (roomy.max_tiles, tight.max_tiles) == (24, 7)
    assert tight.pages[0].image.shape[0] < roomy.pages[0].image.shape[0]
    # InternVL then gives each page the tiles its share allows.
    assert tile_count(*roomy.pages[0].image.shape[1::-1], max_num=24) == 25
    assert tile_count(*tight.pages[0].image.shape[1::-1], max_num=7) == 7


def test_page_cap() -> None:
    doc = read_pdf(invoice_pdf(500), max_pages=8)
    assert doc.total_pages == 500
    assert len(doc.pages) == 8
    assert doc.truncated


def test_encrypted_pdf() -> None:
    with pytest.raises(EncryptedDocument):
        read_pdf(invoice_pdf(1, encrypt=True), name="secret.pdf")


@pytest.mark.parametrize("data", [b"%PDF-1.7\n garbage", invoice_pdf(1)[:300]])
def test_broken_pdf(data: bytes) -> None:
    with pytest.raises(UnreadableDocument):
        read_pdf(data, name="broken.pdf")


TABLE_ANSWER = """Invoice from ACME.

| Field | Value |
|---|---|
| Number | INV-7 |
| Total | 1,234.50 EUR |

| Item | Qty | Price |
| :--- | ---: | ---: |
| Bolt \\| M6 | 4 | 0.50 |
| Nut | 4 |
"""


def test_markdown_tables_to_csv_and_json() -> None:
    tables = markdown_tables(TABLE_ANSWER)
    assert tables == [
        [["Field", "Value"], ["Number", "INV-7"], ["Total", "1,234.50 EUR"]],
        [["Item", "Qty", "Price"], ["Bolt | M6", "4", "0.50"], ["Nut", "4", ""]],
    ]
    csv_text = to_csv(tables).decode("utf-8-sig")
    assert csv_text.splitlines()[:3] == ["Field,Value", "Number,INV-7", 'Total,"1,234.50 EUR"']
    assert 'Bolt | M6,4,0.50' in csv_text
    assert to_json(tables).decode().count('"Item": "Nut"') == 1
    assert markdown_tables("no tables | here") == []
