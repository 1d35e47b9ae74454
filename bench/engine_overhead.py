"""What the framework adds on top of an OpenAI-compatible server: the same requests straight to the
server, and through the framework (manager + SQLite store + HTTP engine), in the same process.

The server is ``transformers serve`` with the demo model (started here; see tests/hf_serve.py), or
any server given with ``--url`` (``lmdeploy serve api_server`` on a GPU host). Each framework request
is a new conversation with a photo; its exact request body is captured on the wire and replayed
straight to the server, so both sides send byte-identical requests; the two are interleaved so drift
hits both. Prints throughput of each side, their ratio, the added time to first token, and one
RESULT line.

    python bench/engine_overhead.py [--requests 20] [--max-tokens 24] [--url http://host:23333/v1]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lib.rawstream import stream_chat  # noqa: E402
from bench.lib.timing import TimingSink  # noqa: E402
from bot.config import OpenAIHTTPSettings, Settings  # noqa: E402
from bot.conversation.manager import ConversationManager  # noqa: E402
from bot.engines.openai_http import OpenAIHTTPEngine  # noqa: E402
from bot.seams import Channel  # noqa: E402
from bot.store import SQLiteStore  # noqa: E402
from bot.testing import MemoryFetcher  # noqa: E402
from bot.types import ConversationKey, IncomingMessage, Sender  # noqa: E402


def photo(seed: int) -> bytes:
    image = Image.new("RGB", (800, 600), (seed * 37 % 255, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def start_hf_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    from bot.engines.demo_model import make_demo_model

    model = make_demo_model(folder / "demo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.hf_serve", str(model), "--host", "127.0.0.1", "--port",
                             str(port), "--device", "cpu"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("transformers serve did not start")


async def direct(client: httpx.AsyncClient, url: str, body: bytes) -> tuple[float, float]:
    """(time to first text, total) of one raw streamed request."""
    started, first, end, _ = await stream_chat(client, url, body)
    return first - started, end - started


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        proc = None
        url = args.url
        if not url:
            proc, url = start_hf_server(folder)
        try:
            await measure(args, folder, url, local=proc is not None)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(20)


async def measure(args: argparse.Namespace, folder: Path, url: str, *, local: bool) -> None:
    captured: list[bytes] = []

    async def capture(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            captured.append(request.content)

    engine_client = httpx.AsyncClient(timeout=httpx.Timeout(connect=5, read=None, write=60, pool=None),
                                      event_hooks={"request": [capture]})
    http = OpenAIHTTPSettings(base_url=url, image_placeholder="" if local else "<IMAGE_TOKEN>",
                              max_dynamic_patch=not local, send_repetition_penalty=not local)
    engine = OpenAIHTTPEngine(http, max_concurrency=4, context_length=16384, client=engine_client)
    await engine.start()
    settings = Settings(data_dir=str(folder / "data"),
                        engine={"generation": {"max_new_tokens": args.max_tokens, "temperature": 0.0}})
    store = SQLiteStore(folder / "bench.sqlite3")
    await store.open()
    manager = ConversationManager(settings, store, engine)
    fetcher = MemoryFetcher()
    sinks: dict[str, TimingSink] = {}
    manager.register(Channel("bench", fetcher, lambda context: sinks[context.key.chat]))
    await manager.start()
    raw = httpx.AsyncClient(timeout=httpx.Timeout(connect=5, read=None, write=60, pool=None))

    async def through_framework(i: int) -> tuple[float, float]:
        attachment = fetcher.add(photo(i), f"photo{i}.jpg", "image/jpeg")
        started = time.perf_counter()
        sinks[f"c{i}"] = sink = TimingSink(started)
        ticket = await manager.submit(IncomingMessage(ConversationKey("bench", f"c{i}"), Sender("u"),
                                                      "What is wrong with this appliance?", (attachment,),
                                                      locale="en"))
        assert ticket is not None
        end, _ = await sink.done
        assert await ticket.done == "answered"
        return (sink.first or end) - started, end - started

    # warm up both paths (model, connections, caches of the first image)
    await through_framework(-1)
    await direct(raw, url, captured[-1])

    fw_ttft, fw_total, raw_ttft, raw_total = [], [], [], []
    for i in range(args.requests):
        first, total = await through_framework(i)
        fw_ttft.append(first)
        fw_total.append(total)
        first, total = await direct(raw, url, captured[-1])
        raw_ttft.append(first)
        raw_total.append(total)

    await manager.stop()
    await engine.close()
    await engine_client.aclose()
    await raw.aclose()
    await store.close()

    raw_rps = len(raw_total) / sum(raw_total)
    fw_rps = len(fw_total) / sum(fw_total)
    # Throughput per request from medians: one slow server answer (the server shares this machine's two
    # cores with the bench) must not decide the figure; the mean-based ratio is printed too.
    ratio = statistics.median(raw_total) / statistics.median(fw_total)
    added = [(f - r) * 1000 for f, r in zip(fw_ttft, raw_ttft, strict=True)]
    print(f"server: {url} ({'transformers serve, demo model, CPU' if local else 'given with --url'})")
    print(f"requests: {args.requests} each way, one photo (800x600) + question, {args.max_tokens} new tokens, "
          "byte-identical bodies")
    print(f"straight to the server: {raw_rps:.2f} req/s, TTFT p50 {statistics.median(raw_ttft) * 1000:.1f} ms")
    print(f"through the framework:  {fw_rps:.2f} req/s, TTFT p50 {statistics.median(fw_ttft) * 1000:.1f} ms")
    print(f"throughput ratio (framework / raw), medians: {ratio:.3f} (means: {fw_rps / raw_rps:.3f})   "
          f"added TTFT p50: {statistics.median(added):.1f} ms")
    print(f"RESULT overhead_ratio={ratio:.3f} added_ttft_ms={statistics.median(added):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--url", default="", help="an OpenAI-compatible server to measure instead (…/v1)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
