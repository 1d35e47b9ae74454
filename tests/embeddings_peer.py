"""A real OpenAI-compatible embeddings server on 127.0.0.1 for the dense retrieval tests.

``POST /v1/embeddings`` answers OpenAI's shape (``{"object": "list", "data": [{"object": "embedding",
"index": i, "embedding": [...]}], "model": ..., "usage": {...}}``). Its vectors come from a small fixed
multilingual concept lexicon: "pump", "bomba" and "Pumpe" add to the same dimension, so texts about the
same thing in English, Portuguese and German are close, as a multilingual embedding model makes them.
Words outside the lexicon share one weak dimension. ``failing`` makes it answer HTTP 503.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONCEPTS: list[set[str]] = [
    {"pump", "pumps", "bomba", "bombas", "pumpe", "pumpen"},
    {"clean", "cleaned", "cleaning", "limpar", "limpeza", "limpo", "reinigen", "gereinigt"},
    {"impeller", "rotor", "laufrad"},
    {"hours", "hour", "horas", "hora", "stunden", "often", "frequencia", "oft"},
    {"router", "roteador", "wifi", "wi", "fi", "rede", "network", "netzwerk"},
    {"reset", "restaurar", "zurucksetzen", "button", "botao", "knopf"},
    {"paper", "papel", "papier", "jam", "jams", "atolado", "stau"},
    {"warranty", "garantia", "garantie", "months", "meses", "monate"},
]
#: How much a word outside the lexicon weighs (on the last dimension): texts are never all-zero.
OTHER = 0.05
DIMENSIONS = len(CONCEPTS) + 1


def _words(text: str) -> list[str]:
    folded = "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9]+", folded)


def embed(text: str) -> list[float]:
    """The peer's vector of ``text`` (not normalised: the client normalises)."""
    vector = [0.0] * DIMENSIONS
    for word in _words(text):
        hits = [i for i, concept in enumerate(CONCEPTS) if word in concept]
        for i in hits:
            vector[i] += 1.0
        if not hits:
            vector[-1] += OTHER
    return vector


class EmbeddingsPeer:
    """Start with ``start()``; ``url`` is the API base (``http://127.0.0.1:PORT/v1``). ``requests``: the JSON
    bodies received, with their ``Authorization`` header under ``"_auth"``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failing = False
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: pytest shows failures, not access logs
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                body["_auth"] = self.headers.get("Authorization", "")
                peer.requests.append(body)
                if self.path != "/v1/embeddings":
                    return self._send(404, {"error": {"message": "not found"}})
                if peer.failing:
                    return self._send(503, {"error": {"message": "model is loading"}})
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [{"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(texts)]
                tokens = sum(len(_words(t)) for t in texts)
                self._send(200, {"object": "list", "data": data, "model": body.get("model", ""),
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> EmbeddingsPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
