"""GPU smoke test and overhead figures, for a CUDA host with a real InternVL checkpoint.

Runs four turns — a photo, a 4-image turn, a video and a PDF — through the framework (conversation
manager + store + engine) with

1. the LMDeploy pipeline engine in this process, and raw LMDeploy (``async_engine.generate``) on the
   very prompts the engine built;
2. (with ``--api-url``) the HTTP engine against ``lmdeploy serve api_server``, and raw HTTP with the
   very request bodies the engine sent;

and prints time to first token, tokens/s and the framework's overhead against raw LMDeploy.

    pip install 'internvl-bot[lmdeploy]'          # CUDA host
    lmdeploy serve api_server /models/InternVL3-8B --server-port 23333 &   # for part 2
    python bench/gpu_smoke.py --model /models/InternVL3-8B --api-url http://127.0.0.1:23333/v1

``--self-test`` runs the same code on this machine against the LMDeploy stand-ins of the test suite
(no GPU; the figures then mean nothing), to check the script itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lib.rawstream import stream_chat  # noqa: E402
from bench.lib.timing import TimingSink  # noqa: E402
from bot.config import LMDeploySettings, OpenAIHTTPSettings, Settings  # noqa: E402
from bot.conversation.manager import ConversationManager  # noqa: E402
from bot.engines import Engine  # noqa: E402
from bot.engines.lmdeploy import LMDeployEngine  # noqa: E402
from bot.engines.openai_http import OpenAIHTTPEngine  # noqa: E402
from bot.seams import Channel  # noqa: E402
from bot.store import MemoryStore  # noqa: E402
from bot.testing import MemoryFetcher  # noqa: E402
from bot.types import Attachment, ConversationKey, IncomingMessage, Sender  # noqa: E402

# -- inputs -------------------------------------------------------------------------------------------


def picture(width: int, height: int, seed: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    for k in range(12):
        x, y = (seed * 97 + k * 131) % width, (seed * 53 + k * 71) % height
        draw.rectangle([x, y, x + width // 6, y + height // 8], outline=(20 * k % 255, 80, 160), width=6)
    draw.text((20, 20), f"Model XR-{seed}00  Error E{seed}5", fill=(10, 10, 10))
    return image


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def pdf(pages: int) -> bytes:
    sheets = [picture(1240, 1754, 10 + p) for p in range(pages)]
    buffer = io.BytesIO()
    sheets[0].save(buffer, "PDF", save_all=True, append_images=sheets[1:], resolution=150)
    return buffer.getvalue()


def video(folder: Path) -> bytes:
    path = folder / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=10:size=1280x720:rate=30",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", "-y", str(path)], check=True)
    return path.read_bytes()


@dataclass
class Turn:
    name: str
    text: str
    files: list[tuple[str, bytes, str]]


def turns(folder: Path, with_video: bool) -> list[Turn]:
    out = [
        Turn("photo", "What is wrong with this appliance? Answer in two sentences.",
             [("photo.jpg", jpeg(picture(3024, 4032, 1)), "image/jpeg")]),
        Turn("4 images", "Compare these four photos: which one shows the error code?",
             [(f"p{i}.jpg", jpeg(picture(1600, 1200, i)), "image/jpeg") for i in range(4)]),
        Turn("pdf", "Extract the model numbers and error codes into a Markdown table.",
             [("sheet.pdf", pdf(3), "application/pdf")]),
    ]
    if with_video:
        out.insert(2, Turn("video", "What happens in this video?", [("clip.mp4", video(folder), "video/mp4")]))
    return out


# -- measuring -----------------------------------------------------------------------------------------


@dataclass
class Figures:
    ttft: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)

    def add(self, started: float, first: float | None, end: float, tokens: int) -> None:
        first = first or end
        self.ttft.append(first - started)
        self.total.append(end - started)
        self.tokens_per_s.append(tokens / max(end - first, 1e-6))


async def through_framework(engine: Engine, settings: Settings, items: list[Turn], rounds: int,
                            after_each: Callable[[], Any]) -> tuple[dict[str, Figures], list[Any]]:
    manager = ConversationManager(settings, MemoryStore(), engine)
    fetcher = MemoryFetcher()
    sinks: dict[str, TimingSink] = {}
    manager.register(Channel("smoke", fetcher, lambda context: sinks[context.key.chat]))
    figures: dict[str, Figures] = {t.name: Figures() for t in items}
    captured: list[Any] = []
    n = 0
    for _ in range(rounds):
        for turn in items:
            n += 1
            attachments: tuple[Attachment, ...] = tuple(fetcher.add(data, name, mime) for name, data, mime in turn.files)
            sinks[f"c{n}"] = sink = TimingSink()
            started = time.perf_counter()
            ticket = await manager.submit(IncomingMessage(ConversationKey("smoke", f"c{n}"), Sender("u"), turn.text,
                                                          attachments, locale="en"))
            assert ticket is not None
            end, answer = await sink.done
            state = await ticket.done
            if state != "answered":
                raise SystemExit(f"{turn.name}: the framework did not answer ({state}): {answer}")
            figures[turn.name].add(started, sink.first, end, engine.count_tokens(answer))
            captured.append((turn.name, after_each()))
    await manager.stop()
    return figures, captured


async def raw_lmdeploy(engine: LMDeployEngine, captured: list[tuple[str, Any]], gen: Any) -> dict[str, Figures]:
    figures: dict[str, Figures] = {}
    core = engine._engine
    for k, (name, prompt) in enumerate(captured):
        started, first, text = time.perf_counter(), None, ""
        async for out in core.generate(prompt, 10_000 + k, gen_config=gen, stream_response=True,
                                       sequence_start=True, sequence_end=True):
            if out.response:
                first = first or time.perf_counter()
                text += out.response
        figures.setdefault(name, Figures()).add(started, first, time.perf_counter(), engine.count_tokens(text))
    return figures


async def raw_http(url: str, captured: list[tuple[str, bytes]], count: Callable[[str], int]) -> dict[str, Figures]:
    figures: dict[str, Figures] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(connect=5, read=None, write=60, pool=None)) as client:
        for name, body in captured:
            started, first, end, text = await stream_chat(client, url, body)
            figures.setdefault(name, Figures()).add(started, first, end, count(text))
    return figures


def report(title: str, framework: dict[str, Figures], raw: dict[str, Figures]) -> float:
    print(f"\n{title}")
    print(f"{'turn':<10} {'TTFT fw ms':>11} {'TTFT raw ms':>12} {'tok/s fw':>9} {'tok/s raw':>10} {'total ratio':>12}")
    ratios = []
    for name, fw in framework.items():
        rw = raw[name]
        ratio = statistics.median(rw.total) / statistics.median(fw.total)
        ratios.append(ratio)
        print(f"{name:<10} {statistics.median(fw.ttft) * 1000:>11.0f} {statistics.median(rw.ttft) * 1000:>12.0f} "
              f"{statistics.median(fw.tokens_per_s):>9.1f} {statistics.median(rw.tokens_per_s):>10.1f} {ratio:>12.3f}")
    return statistics.median(ratios)


def _all(figures: dict[str, Figures], attr: str) -> float:
    return statistics.median(v for f in figures.values() for v in getattr(f, attr))


async def run(args: argparse.Namespace) -> None:
    module = None
    if args.self_test:
        from tests import fake_lmdeploy_module as module
    else:
        try:
            import torch
        except ImportError:
            raise SystemExit("gpu_smoke needs a CUDA host with LMDeploy: pip install 'internvl-bot[lmdeploy]'") from None
        if not torch.cuda.is_available():
            raise SystemExit("gpu_smoke: no CUDA device here — run it on a GPU host (see README, 'GPU hosts')")
    async with contextlib.AsyncExitStack() as stack:
        if args.self_test and not args.api_url:
            from tests.fake_lmdeploy import fake_lmdeploy

            args.api_url = (await stack.enter_async_context(fake_lmdeploy(answer_words=24))).url
        await measure(args, module)


async def measure(args: argparse.Namespace, module: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = turns(folder, with_video=not args.no_video)
        settings = Settings(data_dir=str(folder / "data"), engine={
            "max_concurrency": 8, "generation": {"max_new_tokens": args.max_tokens, "temperature": 0.0}})
        result: dict[str, str] = {}

        engine = LMDeployEngine(LMDeploySettings(model=args.model or "self-test", backend=args.backend,
                                                 session_len=args.session_len, tp=args.tp), module=module)
        await engine.start()
        prompts: list[Any] = []
        real_generate = engine._engine.generate

        def recording_generate(prompt: Any, *a: Any, **kw: Any) -> Any:
            prompts.append(prompt)
            return real_generate(prompt, *a, **kw)

        engine._engine.generate = recording_generate
        framework, captured = await through_framework(engine, settings, items, args.rounds, lambda: prompts[-1])
        engine._engine.generate = real_generate
        raw = await raw_lmdeploy(engine, captured, engine.gen_config(settings.engine.generation))
        ratio = report("LMDeploy pipeline in process", framework, raw)
        result.update(pipeline_ttft_ms=f"{_all(framework, 'ttft') * 1000:.0f}",
                      pipeline_tok_s=f"{_all(framework, 'tokens_per_s'):.1f}", pipeline_overhead_ratio=f"{ratio:.3f}")
        await engine.close()

        if args.api_url:
            bodies: list[bytes] = []

            async def capture(request: httpx.Request) -> None:
                if request.url.path.endswith("/chat/completions"):
                    bodies.append(request.content)

            client = httpx.AsyncClient(timeout=httpx.Timeout(connect=5, read=None, write=60, pool=None),
                                       event_hooks={"request": [capture]})
            http = OpenAIHTTPEngine(OpenAIHTTPSettings(base_url=args.api_url), max_concurrency=8,
                                    context_length=args.session_len or 16384, client=client)
            await http.start()
            framework, captured = await through_framework(http, settings, items, args.rounds, lambda: bodies[-1])
            raw = await raw_http(args.api_url, captured, http.count_tokens)
            ratio = report(f"HTTP engine -> {args.api_url}", framework, raw)
            result.update(http_ttft_ms=f"{_all(framework, 'ttft') * 1000:.0f}",
                          http_tok_s=f"{_all(framework, 'tokens_per_s'):.1f}", http_overhead_ratio=f"{ratio:.3f}")
            await http.close()
            await client.aclose()
    print("\nRESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="InternVL checkpoint folder or hub id")
    parser.add_argument("--api-url", default="", help="lmdeploy serve api_server base URL, e.g. http://127.0.0.1:23333/v1")
    parser.add_argument("--backend", choices=["turbomind", "pytorch"], default="turbomind")
    parser.add_argument("--session-len", type=int, default=16384)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-video", action="store_true", help="skip the video turn (no ffmpeg)")
    parser.add_argument("--self-test", action="store_true", help="run against the test suite's LMDeploy stand-ins")
    args = parser.parse_args()
    if not args.self_test and not args.model:
        parser.error("--model is required (or --self-test)")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
