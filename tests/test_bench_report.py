"""bench/run_all.py: the report writer on recorded rows (tables, ratios against the baselines of the
same run, headline figures), the markdown-table capture of scripts without --json, and the
per-process peak RSS of a child run. No timings are asserted."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", ROOT / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _result(name: str, title: str, **kw) -> dict:
    base = {"name": name, "title": title, "cmd": ["python", f"bench/{name}.py"], "rc": 0, "wall_s": 12.0,
            "peak_rss_mb": 500.0, "load_before": 0.1, "data": None, "tables": [], "error": ""}
    return {**base, **kw}


def recorded_report() -> dict:
    peer = {"info": {"espnet": "202506", "torch": "2.11.0", "threads": 2,
                     "valle": "fails to build: TypeError: ResidualAttentionBlockAdaLM.__init__()"},
            "rows": [{"impl": "espnet-202506", "model": "MultiScaleLM", "what": "train", "rows": 8, "frames": 256,
                      "params_m": 7.6, "s": 2.78, "frames_per_s": 737.0},
                     {"impl": "espnet-202506", "model": "MultiScaleLM", "what": "decode", "rows": 1, "frames": 100,
                      "params_m": 7.6, "s": 1.67, "frames_per_s": 60.0},
                     {"impl": "espnet-202506", "model": "MultiScaleLM", "what": "decode", "rows": 8, "frames": 100,
                      "params_m": 7.6, "s": 2.8, "frames_per_s": 285.0}]}
    ours = {"bench": "multiscale", "rows": [
        {"strategy": "multiscale", "measure": "train", "rows": 8, "frames": 256, "ms": 2260, "frames_per_s": 905.0,
         "params": 7_200_000},
        {"strategy": "multiscale", "measure": "greedy decode", "rows": 1, "frames": 100, "ms": 2170,
         "frames_per_s": 46.0},
        {"strategy": "multiscale", "measure": "greedy decode", "rows": 8, "frames": 100, "ms": 2550,
         "frames_per_s": 313.0},
        {"strategy": "delay", "measure": "train", "rows": 8, "frames": 256, "ms": 775, "frames_per_s": 2641.0,
         "params": 5_400_000}]}
    mfu = {"info": {"threads": 2, "cpu_bf16": False, "batch": 8, "frames": 200, "phones": 40, "streams": 8},
           "peak": [{"precision": "fp32", "gflops": {"1024": 120.0, "2048": 133.0}, "peak": 133.0}],
           "rows": [{"size": "30m", "strategy": "delay", "precision": "fp32", "params_m": 27.9, "positions": 1960.0,
                     "T": 245.0, "useful_gflop": 330.0, "s": 3.0, "gflops": 110.0, "mfu": 110.0 / 133.0,
                     "bare_mfu": 0.95, "vs_backbone": 0.81, "backbone_s": 2.3, "bare_gflop": 290.0,
                     "backbone_positions": 1960.0,
                     "profile": [{"op": "aten::mm", "calls": 201, "self_ms": 2400.0, "share": 0.8},
                                 {"op": "other", "calls": 900, "self_ms": 600.0, "share": 0.2}]}]}
    scaling = {"info": {"threads": 2, "dim": 256, "layers": 4, "streams": 4, "batch": 8, "frames": 150,
                        "decode_frames": 50},
               "rows": [{"curve": "batch", "strategy": "delay", "x": 1, "what": "train", "s": 0.1, "frames_per_s": 1500.0},
                        {"curve": "batch", "strategy": "delay", "x": 4, "what": "train", "s": 0.2, "frames_per_s": 3000.0},
                        {"curve": "processes", "strategy": "delay", "x": 2, "what": "train", "error": "boom"}],
               "pngs": ["docs/scaling_batch.png"]}
    table = "#### Padding\n\n| batches | real share |\n|---|---|\n| bucketed | 0.95 |"
    return {"started": "2026-12-03 23:10 UTC", "quick": False, "total_s": 900.0,
            "machine": {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "mem_gib": 8.0, "avx512f": False,
                        "avx512_bf16": False, "amx_bf16": False, "threads": 2, "os": "Linux", "load_start": 0.2,
                        "load_end": 0.3},
            "versions": {"python": "3.11.7", "torch": "2.11.0", "numpy": "2.0", "speechlm_git": "abc123",
                         "peer": "torch 2.11.0, espnet 202506"},
            "results": [_result("batching", "Padding", tables=[table], peak_rss_mb=40.0),
                        _result("decode", "Decoding", rc=1, error="Traceback ...\nValueError: broken"),
                        _result("index_memory", "Indexing", output="peak RSS    420 MB   (target < 1024 MB: ok)"),
                        _result("train_speed", "Trainer", data={"rows": [{"precision": "fp32", "threads": 2,
                                                                          "tokens_per_s": 6296.86, "vs_first": 1.0}]}),
                        _result("mfu", "CPU limit", data=mfu, peak_rss_mb=1600.0),
                        _result("scaling", "Scaling", data=scaling),
                        _result("multiscale", "Ours at the peer's shapes", data=ours),
                        _result("peer", "ESPnet", data=peer, cmd=["PEER/bin/python", "bench/peer/espnet_lm.py"])]}


def test_report_tables_and_ratios(run_all, tmp_path):
    text = run_all.write_report(recorded_report(), tmp_path / "PERFORMANCE.md")
    # machine and versions
    assert "Test CPU, 2 cores" in text and "avx512_bf16 no" in text and "speechlm git abc123" in text
    assert "peer env: torch 2.11.0, espnet 202506" in text
    # peer table: ours / ESPnet frames/s in the same run
    assert "| speechlm | multiscale | train | 8 | 7.2M | 905 | 1.23x |" in text
    assert "| speechlm | multiscale | decode | 1 | - | 46 | 0.77x |" in text
    assert "| speechlm | multiscale | decode | 8 | - | 313 | 1.10x |" in text
    assert "| speechlm | delay | train | 8 | 5.4M | 2,641 | 3.58x |" in text
    assert "| espnet-202506 | MultiScaleLM | train | 8 | 7.6M | 737 | 1.00x |" in text
    assert "ValleLM` (AR + NAR): fails to build: TypeError" in text
    # headline: the ratios, MFU, the largest peak RSS
    assert "| vs ESPnet train 8 row(s) | 1.23x | >= 1.5x |" in text
    assert "| vs ESPnet decode 1 row(s) | 0.77x | >= 2x |" in text
    assert "| MFU 30m delay fp32 | 83% | >= 80% |" in text
    assert "| vs bare backbone 30m delay fp32 | 0.81 | >= 0.85 |" in text
    assert "| matmul peak fp32 | 133 GFLOP/s |  |" in text
    assert "largest peak RSS of a benchmark process | 1,600 MB (mfu) |  |" in text
    # MFU table row, matmul table
    assert "| 30m | delay | fp32 | 27.9M | 1960 | 330 | 3.00 | 110 | 83% | 95% | 0.81 |" in text
    assert "| fp32 | 120 | 133 | 133 |" in text
    assert "| `aten::mm` | 201 | 2400 | 80% |" in text  # the profile of the step
    # scaling: the ratio to the first point, a failed point, the PNG link relative to the report
    assert "| batch | delay | 4 | train | 0.200 | 3,000 | 2.00 |" in text
    assert "| processes | delay | 2 | train | failed | - | - |" in text
    assert "![scaling_batch.png](" in text
    # runs table with peak RSS; a script's own tables kept; a failure shown with its error
    assert "| batching | `python bench/batching.py` | 0 | 12 | 40 | 0.10 |" in text
    assert "| bucketed | 0.95 |" in text
    assert "ValueError: broken" in text
    # a script's JSON rows without tables of its own
    assert "| precision | threads | tokens_per_s | vs_first |\n|---|---|---|---|\n| fp32 | 2 | 6,297 | 1 |" in text
    # every fenced block is marked for tests/test_docs.py (docs/*.md blocks run unless marked)
    assert text.count("```") == 2 * text.count("<!-- doc-test: skip (benchmark output, not a command) -->\n```")
    assert "<!-- doc-test: skip (benchmark output, not a command) -->\n```\npeak RSS    420 MB   (target < 1024 MB: ok)\n```" in text  # a script without tables: its output


def test_report_without_peer_says_why(run_all, tmp_path):
    rep = recorded_report()
    rep["results"] = [r for r in rep["results"] if r["name"] != "peer"]
    rep["results"].append(_result("peer", "ESPnet", cmd=[], rc=None, peak_rss_mb=None,
                                  error="bench/peer/venv.sh failed: no network"))
    text = run_all.write_report(rep, tmp_path / "PERFORMANCE.md")
    assert "The peer rows are missing: bench/peer/venv.sh failed: no network" in text
    assert "| speechlm | multiscale | train | 8 | 7.2M | 905 | - |" in text  # no baseline, no ratio
    assert "vs ESPnet" not in text.split("## ESPnet")[0]


def test_from_json_roundtrip(run_all, tmp_path, monkeypatch):
    """--from-json rewrites the report from a recorded performance.json without running anything."""
    rec = tmp_path / "performance.json"
    rec.write_text(json.dumps(recorded_report()))
    out = tmp_path / "PERFORMANCE.md"
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--from-json", str(rec), "--out", str(out)])
    run_all.main()
    assert "1.23x" in out.read_text()


def test_markdown_tables(run_all):
    text = "threads=2\n\n### KV cache\n\n| a | b |\n|---|---|\n| 1 | 2 |\nnot a table\n| c |\n|---|\n| 3 |\n"
    tables = run_all.markdown_tables(text)
    assert tables[0] == "#### KV cache\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    assert tables[1] == "| c |\n|---|\n| 3 |"


def test_child_peak_rss(run_all, tmp_path):
    """The peak RSS of a child run is that child's own (wait4), here one that touches ~200 MB."""
    code = "import numpy as np; a = np.ones(200 * 2**20 // 8); print('| x |'); print('|---|')"
    rc, wall, rss, out = run_all.run_child([sys.executable, "-c", code], {}, 60, tmp_path / "log")
    assert rc == 0 and "| x |" in out
    # no upper bound: a forked child's peak starts at its parent's size (pytest's, in a full run);
    # run_all itself is a small process
    assert rss > 190
    rc, *_ = run_all.run_child([sys.executable, "-c", "raise SystemExit(3)"], {}, 60, tmp_path / "log2")
    assert rc == 3


def test_probe_drops_unknown_options(run_all, tmp_path):
    """Another helper's script gets only the options its --help lists (and --json only if it takes it)."""
    script = tmp_path / "s.py"
    script.write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--threads')\n"
                      "p.add_argument('--json')\np.parse_args()\n")
    argv, js = run_all.supported([sys.executable, str(script)], ["--threads", "2", "--quick", "--steps", "1"], {})
    assert argv == ["--threads", "2"] and js


def test_alternated_rounds_keep_each_rows_fastest(run_all):
    """--pair-rounds: another round of a benchmark folds in row by row (the faster frames/s kept,
    every round listed), and the side-by-side table shows the rounds."""
    first = _result("peer", "peer", data={"rows": [
        {"impl": "espnet-202506", "model": "MultiScaleLM", "what": "decode", "rows": 1, "frames_per_s": 40.0},
        {"impl": "espnet-202506", "model": "MultiScaleLM", "what": "decode", "rows": 8, "frames_per_s": 200.0}]})
    again = run_all.Result("peer", "peer", [], rc=0, wall_s=5.0, peak_rss_mb=900.0, data={"rows": [
        {"impl": "espnet-202506", "model": "MultiScaleLM", "what": "decode", "rows": 1, "frames_per_s": 50.0},
        {"impl": "espnet-202506", "model": "MultiScaleLM", "what": "decode", "rows": 8, "frames_per_s": 150.0}]})
    run_all.merge_best_rows(first, again)
    one, eight = first["data"]["rows"]
    assert one["frames_per_s"] == 50.0 and one["frames_per_s_rounds"] == [40.0, 50.0]
    assert eight["frames_per_s"] == 200.0 and eight["frames_per_s_rounds"] == [200.0, 150.0]
    assert first["wall_s"] == 17.0 and first["peak_rss_mb"] == 900.0
    report = {"machine": {"threads": 2}, "results": [first]}
    lines, _ = run_all.peer_section(report)
    assert any(line.endswith("| 40 / 50 |") for line in lines), lines
