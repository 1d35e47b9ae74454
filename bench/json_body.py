"""How long a 5 MB JSON webhook body takes to parse and depth-check (``parse_json_object``, which runs on the
event loop). Three shapes of about 5 MB: a message with a base64 attachment, a message with a long text, and
a list of many small objects (the parser's worst case: every value is a Python object). The median of
``--rounds`` runs each. Ends with one RESULT line: ``json_5mb_ms`` is the slower of the two message shapes.

    python bench/json_body.py
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.common.http import parse_json_object

SIZE = 5_000_000


def bodies() -> dict[str, bytes]:
    attachment = base64.b64encode(bytes(range(256)) * (SIZE * 3 // 4 // 256)).decode()
    words = "Olá, the pump <b>still</b> makes a \"noise\" — ĉu vi aŭdas? 音がする。\n"
    return {
        "attachment": json.dumps({"conversation_id": "T-1", "message_id": "m-1", "customer": {"id": "c-1"},
                                  "attachments": [{"data": attachment, "filename": "photo.png"}]}).encode(),
        "text": json.dumps({"event": "message_created", "content": words * (SIZE // len(words.encode())),
                            "conversation": {"id": 1, "messages": [{"id": 1}]}}, ensure_ascii=False).encode(),
        "objects": json.dumps({"items": [{"id": i, "name": "part", "tags": ["a", "b"]}
                                         for i in range(SIZE // 51)]}).encode(),
    }


def timed(body: bytes, rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        parse_json_object(body)
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    results = {}
    for name, body in bodies().items():
        results[name] = timed(body, args.rounds)
        print(f"{name:<11} {len(body) / 1e6:5.2f} MB  {results[name]:7.1f} ms")
    print(f"RESULT json_5mb_ms={max(results['attachment'], results['text']):.1f} "
          f"json_5mb_objects_ms={results['objects']:.1f}")


if __name__ == "__main__":
    main()
