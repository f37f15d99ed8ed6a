"""The benchmark scripts run and print their tables (a smoke test: timings are never asserted).

Each runs on a tiny model for one or two timed steps, so a change to the library that breaks a
benchmark shows here rather than in a device session, whose minutes are scarce.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str, *args: str, timeout: int = 240) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=timeout)
    assert r.returncode == 0, f"{name} {' '.join(args)}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr and "# skipped lstmkit" not in r.stdout, r.stdout + r.stderr
    return r.stdout


def ratio_rows(out: str) -> list[list[str]]:
    """Table rows after the header and rule: the cells of each ``| ... |`` line."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if not set(r[0]) <= set("-")]


@pytest.mark.slow
def test_bench_lm_train_prints_the_reference_and_lstmkit_rows_and_a_profile():
    out = bench("bench_lm_train.py", "--config", "configs/tiny.toml", "--steps", "1", "--skip-fastai", "--profile", "1")
    rows = ratio_rows(out)
    # A CPU with bf16 units (AMX, AVX512-BF16) adds an fp32 lstmkit row after the default (bf16) one.
    names = [r[0].split(" ")[0] for r in rows]
    assert names[0] == "reference" and names[1:] in (["lstmkit"], ["lstmkit", "lstmkit"]), out
    assert rows[0][2] == "1.00", out
    assert all(float(r[2]) > 0 and float(r[1].replace(",", "")) > 0 for r in rows[1:]), out
    assert re.search(r"# profile of 1 training steps .* ms per step", out), out
    assert re.search(r"#\s+[\d.]+%\s+[\d.]+ ms/step", out), out
    assert int(re.search(r"# per step: (\d+) PyTorch operators dispatched", out)[1]) > 20, out


@pytest.mark.slow
def test_bench_dynamic_eval_and_bench_cache_agree_with_their_references():
    out = bench("bench_dynamic_eval.py", "--config", "configs/tiny.toml", "--segments", "4", "--device", "cpu")
    assert [r[0].split(" ")[0] for r in ratio_rows(out)] == ["lstmkit", "reference"], out
    assert float(re.search(r"relative difference ([\d.e+-]+)", out).group(1)) < 1e-5, out
    out = bench("bench_cache.py", "--tokens", "400", "--ref-tokens", "20", "--vocab", "500", "--hidden", "16",
                "--window", "50")
    assert re.search(r"^reference .*1\.00$", out, re.M) and re.search(r"^lstmkit NeuralCache\s+[\d,]+", out, re.M), out
    assert float(re.search(r"max \|NLL difference\| on the 20 tokens both scored: ([\d.e+-]+)", out).group(1)) < 1e-4, out


@pytest.mark.slow
def test_bench_las_prints_lstmkit_against_the_plain_reference(tmp_path):
    cfg = tmp_path / "small.toml"        # the toy config's shape at a fraction of its width: the bench's plumbing
    cfg.write_text("[model]\nlistener_hidden = 32\nkey_size = 16\nembed_size = 16\nspeller_hidden = 32\n"
                   "ctc_weight = 0.5\n[data]\nbatch_size = 16\n[train]\nval_ctc_weight = 0.5\n")
    out = bench("bench_las.py", "--config", str(cfg), "--batches", "1", "--val-utts", "16", "--profile", "1")
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("#")}
    assert {"lstmkit", "plain", "ratio"} <= set(rows), out
    assert all(float(v) > 0 for v in re.findall(r"\s([\d.]+)", rows["ratio"])), out
    assert re.search(r"# profile of 1 training steps of lstmkit's row .*ctc_weight 0.5.* ms per step", out), out
    assert re.search(r"#\s+[\d.]+%\s+[\d.]+ ms/step .*ctc_loss", out), out      # the trainer's loss, CTC included
    ops = re.search(r"# per step: (\d+) PyTorch operators dispatched .*, ([\d.]+) per output character \((\d+) a step\)", out)
    assert ops and abs(int(ops[1]) / int(ops[3]) - float(ops[2])) < 0.05 and float(ops[2]) > 50, out


def test_check_las_precision_runs_and_lstm_cell_keeps_the_small_updates():
    out = bench("check_las_precision.py")
    row = next(line for line in out.splitlines() if line.startswith("lstmkit lstm_cell"))
    assert float(re.search(r"relative error ([\d.]+)", row).group(1)) < 0.02, out
    assert re.search(r"^lstmkit BiLSTM .*\S", out, re.M) and re.search(r"^plain nn.LSTM left to autocast\s+\S", out, re.M), out


@pytest.mark.slow
def test_las_bf16_probe_trains_the_old_forms_on_the_emulated_gpu():
    out = bench("las_bf16_probe.py", "--form", "bf16-old", "--epochs", "1", "--n-train", "64", "--n-val", "8",
                "--threads", "1")
    rows = ratio_rows(out)
    assert rows and all(r[0].isdigit() and r[4] != "nan" for r in rows), out


@pytest.mark.parametrize("script,flag,value", [
    ("bench_lm_train.py", "--steps", "0"), ("bench_lm_train.py", "--profile", "-1"), ("bench_las.py", "--batches", "nan"), ("bench_las.py", "--val-utts", "0"),
    ("bench_dynamic_eval.py", "--segments", "-3"), ("bench_cache.py", "--lam", "1.5"), ("check_las_precision.py", "--scale", "inf"),
    ("check_lm_numerics.py", "--lr", "0"), ("las_bf16_probe.py", "--epochs", "0"), ("tail_average_probe.py", "--minutes", "-1")])
def test_benchmark_number_flags_refuse_values_that_make_no_sense(script, flag, value):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), flag, value], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and f"argument {flag}: found" in r.stderr and "Traceback" not in r.stderr, r.stderr
