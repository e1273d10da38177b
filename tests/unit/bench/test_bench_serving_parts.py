"""bench/serving.py's and bench/profiles.py's pure parts: server variants, baseline
ratios and the profile summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profiles import summarize
from bench.serving import BASELINE, Hotswap, _against_baseline

RAW = """\
thread (11): MainThread;<module> (x.py:1);run (loop.py:3) 10
thread (12): infer-0;_work (inference.py:9);_conv_forward (torch/nn/modules/conv.py:454) 70
thread (13): codec_1;_worker (thread.py:2);decode_grpc (serving/codec.py:300) 15
thread (14): codec_0;_worker (thread.py:2);decode_grpc (serving/codec.py:301) 5
"""


def test_profile_summary_shares_by_thread_and_running_frame() -> None:
    top = summarize(RAW)
    assert top["busy_samples"] == 100
    assert top["threads"] == {"infer": 0.7, "codec": 0.2, "MainThread": 0.1}
    assert top["self"] == {
        "_conv_forward (conv.py)": 0.7,
        "decode_grpc (codec.py)": 0.2,
        "run (loop.py)": 0.1,
    }


def test_variants_set_their_settings_in_any_order(tmp_path: Path) -> None:
    a = Hotswap(tmp_path, 1, "hotswap-mmap1m-contiguous").runtime.env
    b = Hotswap(tmp_path, 1, "hotswap-contiguous-mmap1m").runtime.env
    assert a["HOTSWAP_MMAP_THRESHOLD_BYTES"] == b["HOTSWAP_MMAP_THRESHOLD_BYTES"] == "1048576"
    assert a["HOTSWAP_MEMORY_FORMAT"] == "contiguous"
    assert "HOTSWAP_MEMORY_FORMAT" not in Hotswap(tmp_path, 1).runtime.env
    assert Hotswap(tmp_path, 1, "hotswap-eager").runtime.env["HOTSWAP_FREEZE"] == "off"
    assert "HOTSWAP_FREEZE" not in Hotswap(tmp_path, 1).runtime.env
    with pytest.raises(SystemExit, match="unknown server"):
        Hotswap(tmp_path, 1, "hotswap-fast")


def test_baseline_ratio_for_every_plain_hotswap_server() -> None:
    def point(server: str, rps: float) -> dict[str, object]:
        return {
            "server": server,
            "protocol": "grpc",
            "concurrency": 1,
            "batch": 8,
            "requests_per_s": rps,
        }

    points = [
        point(BASELINE, 10.0),
        point("hotswap", 12.0),
        point("hotswap-mmap1m", 9.0),
        point("hotswap-batching", 30.0),
        point("kserve", 11.0),
    ]
    _against_baseline(points)
    ratios = {p["server"]: p.get("baseline_ratio") for p in points}
    assert ratios == {
        BASELINE: None,
        "hotswap": 1.2,
        "hotswap-mmap1m": 0.9,
        "hotswap-batching": None,
        "kserve": None,
    }


def test_summary_without_the_peer_still_judges_the_baseline_and_errors() -> None:
    from bench.serving import Bench

    points = [
        {
            "server": "hotswap",
            "protocol": "grpc",
            "concurrency": 1,
            "batch": 1,
            "errors": 0,
            "baseline_ratio": 0.98,
        },
        {
            "server": "hotswap",
            "protocol": "grpc",
            "concurrency": 8,
            "batch": 1,
            "errors": 2,
            "baseline_ratio": 1.1,
        },
    ]
    entry = Bench._entry("hotswap", points)
    assert entry == {
        "errors": 2,
        "worst_throughput_vs_baseline": 0.98,
        "within_3pct_of_baseline_everywhere": False,
    }
    assert Bench._entry("hotswap", points[:1])["within_3pct_of_baseline_everywhere"]
