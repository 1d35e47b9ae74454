"""The GPU smoke script cannot meet a GPU here; its self-test runs all of its code against the test
suite's LMDeploy stand-ins (pipeline API and api_server), so it is known to work when a GPU host runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def _result(stdout: str) -> dict[str, str]:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), stdout[-2000:]
    return dict(item.split("=") for item in last.removeprefix("RESULT ").split())


def test_telegram_burst_runs_small() -> None:
    run = subprocess.run([sys.executable, "bench/telegram_burst.py", "--private", "3", "--groups", "1",
                          "--per-group", "2", "--word-delay", "0.01"], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert (result["chats"], result["lost"], result["duplicates"], result["unhandled_429"]) == ("4", "0", "0", "0")


def test_growth_runs_small() -> None:
    run = subprocess.run([sys.executable, "bench/growth.py", "--conversations", "50", "--messages", "500",
                          "--per-length", "2", "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(_result(run.stdout)) == {"turn_ms_1", "turn_ms_100", "turn_ms_1000", "growth_ratio", "rss_ratio"}


def test_slack_burst_runs_small() -> None:
    run = subprocess.run([sys.executable, "bench/slack_burst.py", "--threads", "3", "--dms", "2", "--word-delay",
                          "0.01"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert (result["threads"], result["lost"], result["duplicates"], result["unhandled_429"]) == ("5", "0", "0", "0")


def test_outage_runs_small_and_loses_nothing() -> None:
    """Telegram, Slack and Chatwoot down mid-burst (short): every question answered (duplicates and the delay
    after the recovery are figures, reported by the full run in README)."""
    run = subprocess.run([sys.executable, "bench/outage.py", "--questions", "12", "--seconds", "6", "--outage", "3",
                          "--timeout", "90"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert set(result) == {"questions", "lost", "duplicates", "max_delay_after_recovery_s"}
    assert (result["questions"], result["lost"]) == ("12", "0")


def test_hostile_media_stays_under_a_gigabyte_and_gives_memory_back() -> None:
    """Eight 6000x6000 1-bit PNGs (35 KB uploaded, 864 MB decoded) in one message, then three such messages
    at once: every turn answered, the rest of the images left out with a note, peak RSS of the single
    request at most 1 GB, and memory back near the baseline after the turns."""
    run = subprocess.run([sys.executable, "bench/hostile_media.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = {k: float(v) for k, v in _result(run.stdout).items()}
    assert got["answered"] == 4 and got["left_out_notes"] == 4
    assert got["one_peak_mb"] <= 1024, got
    assert got["one_after_mb"] <= got["baseline_mb"] + 150 and got["three_after_mb"] <= got["baseline_mb"] + 150, got


def test_replicas_bench_runs_small() -> None:
    """3 replicas behind nginx on PostgreSQL, one killed mid-run, then 1 replica: nothing lost or doubled."""
    from tests import postgres_cluster
    from tests.replica_cluster import NGINX

    if NGINX is None or not postgres_cluster.available():
        if os.environ.get("INTERNVL_BOT_REQUIRE_NGINX"):
            raise RuntimeError("nginx or PostgreSQL is not installed")
        pytest.skip("needs nginx and PostgreSQL")
    run = subprocess.run([sys.executable, "bench/replicas.py", "--conversations", "40", "--lease", "3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert set(result) == {"replicas", "lost", "duplicates", "order_violations", "failover_s", "msgs_per_s",
                           "msgs_per_s_1"}
    assert (result["replicas"], result["lost"], result["duplicates"], result["order_violations"]) == ("3", "0", "0", "0")
    assert 0 < float(result["failover_s"]) < 3 + 5


def test_json_body_runs_small() -> None:
    run = subprocess.run([sys.executable, "bench/json_body.py", "--rounds", "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(_result(run.stdout)) == {"json_5mb_ms", "json_5mb_objects_ms"}


def test_knowledge_runs_small() -> None:
    """Small sizes, no PostgreSQL: every stage runs (the figures of the full run are in README)."""
    run = subprocess.run([sys.executable, "bench/knowledge.py", "--pages", "40", "--chunks", "2000", "--queries", "50",
                          "--no-postgres"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert {"pages_per_s", "search_p50_ms", "search_p99_ms", "recall_at_5", "rss_mb"} <= set(result)
    # the evaluation set: a regression of the search or the threshold shows here
    assert float(result["recall_at_5_unfiltered"]) >= 0.9 and float(result["recall_at_5"]) >= 0.8
    assert float(result["offtopic_rejected"]) >= 0.8


def test_grounding_bench_runs_small() -> None:
    run = subprocess.run([sys.executable, "bench/grounding.py", "--rounds", "1", "--width", "800", "--height", "600"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert set(result) == {"draw_ms", "encode_ms", "rss_mb"} and float(result["draw_ms"]) > 0
