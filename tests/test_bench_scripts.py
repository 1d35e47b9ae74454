"""The GPU smoke script cannot meet a GPU here; its self-test runs all of its code against the test
suite's LMDeploy stand-ins (pipeline API and api_server), so it is known to work when a GPU host runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.media_corpus import needs_ffmpeg

ROOT = Path(__file__).resolve().parent.parent


@needs_ffmpeg
def test_gpu_smoke_runs_every_turn_through_both_engines() -> None:
    run = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--self-test", "--rounds", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for section in ("LMDeploy pipeline in process", "HTTP engine ->"):
        assert section in run.stdout
    for turn in ("photo", "4 images", "video", "pdf"):
        assert len(re.findall(rf"^{turn}\s+\d+", run.stdout, re.M)) == 2, turn
    result = run.stdout.strip().splitlines()[-1]
    keys = dict(item.split("=") for item in result.removeprefix("RESULT ").split())
    assert set(keys) == {"pipeline_ttft_ms", "pipeline_tok_s", "pipeline_overhead_ratio", "http_ttft_ms",
                         "http_tok_s", "http_overhead_ratio"}


def test_gpu_smoke_refuses_a_machine_without_cuda() -> None:
    run = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--model", "/models/x"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "CUDA" in run.stderr
