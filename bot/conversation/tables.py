"""Markdown tables in an answer -> CSV or JSON files (``/export csv`` / ``/export json``)."""

from __future__ import annotations

import csv
import io
import json
import re

_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def _cells(line: str) -> list[str]:
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table in ``text``: a list of rows (header first), each a list of cells."""
    lines = text.splitlines()
    tables: list[list[list[str]]] = []
    i = 0
    while i < len(lines) - 1:
        if "|" in lines[i] and _SEPARATOR.match(lines[i + 1]):
            header = _cells(lines[i])
            rows = [header]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                row = _cells(lines[i])
                rows.append((row + [""] * len(header))[: len(header)])
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def to_csv(tables: list[list[list[str]]]) -> bytes:
    """All tables, one after another, separated by an empty row (UTF-8 with BOM, as Excel expects)."""
    out = io.StringIO()
    writer = csv.writer(out)
    for k, table in enumerate(tables):
        if k:
            writer.writerow([])
        writer.writerows(table)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def to_json(tables: list[list[list[str]]]) -> bytes:
    """A list of tables, each a list of objects keyed by the header cells."""
    data = [[dict(zip(table[0], row, strict=False)) for row in table[1:]] for table in tables]
    return json.dumps({"tables": data}, ensure_ascii=False, indent=2).encode("utf-8")
