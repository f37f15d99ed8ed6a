#!/usr/bin/env bash
# The GPU checks of issue 18 for the `device` tool (one H200; 15 minutes of device time a session,
# start-up included), in stages that each fit one call and leave time for the next:
#   quick   (~4.5 min) env, CUDA-parametrized tests, LM training tokens/s against the 2017 reference
#           and fastai (bench_lm_train.py on configs/wt2.toml; last, the step in a CUDA graph; then a profile of
#           the default step: top kernels, launches and host waits per step), LAS
#           utterances/s (bench_las.py, then the same profile of its training step), dynamic evaluation tokens/s (bench_dynamic_eval.py), the LAS
#           listener gradients and speller cell state under bf16 against fp32 (check_las_precision.py),
#           LAS toy for 60 s under bf16 (default)
#   recipe  (~7.5 min) configs/wt2-gpu.toml: 6.5 minutes of training with the schedule fitted to the
#           budget, final dev/test evaluation; perplexity against seconds
#   las-fp32 (~1.5 min) the LAS toy minute again in fp32, for comparison
#   compile (~2.5 min) bench_lm_train.py's default row against the same step under torch.compile
#           and in a CUDA graph
#   testtime (~3 min) cache and dynamic evaluation of the recipe's run on the test split (needs the
#           run folder, so only in the same call as `recipe`: `bash ... recipe testtime`)
#   resume  (~2 min) stop-and-resume of the LM and LAS trainers on the GPU equals the uninterrupted
#           run (tests/test_resume_stop.py, cuda cases; train.deterministic), dynamic evaluation on it
#   suite   (<= 9 min) the whole test suite on the GPU machine (no install/notebook tests: no network
#           there): every trainer-based test runs on CUDA, since train.device defaults to auto
# Prepare the wheels here first (bash benchmarks/gpu_wheels.sh), then, e.g.:
#   run(command="bash benchmarks/gpu_check.sh quick", carry=[".whl"], timeout_s=420)
#   run(command="bash benchmarks/gpu_check.sh recipe", carry=[".whl"], timeout_s=560)
# What comes back (at most 8 files): $OUT/summary-<stages>.txt (also printed) and $OUT/logs-<stages>.tar.gz.
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
STAGES=${*:-quick}
BENCH_CONFIG=${BENCH_CONFIG:-configs/wt2.toml}; RECIPE=${RECIPE:-wt2-gpu}; LAS=${LAS:-las-toy}   # smaller ones for a dry run on a CPU
TAG=$(echo "$STAGES" | tr ' ' '-')
LOGS=/tmp/gpu-logs; RUNS=/tmp/gpu-runs
rm -rf "$LOGS" "$RUNS"; mkdir -p "$LOGS" "$RUNS"   # a rerun on a still-warm machine starts clean
SUMMARY="$OUT/summary-$TAG.txt"
export PYTHONUNBUFFERED=1 LSTMKIT_STATUS_SECONDS=30 LSTMKIT_TENSORBOARD=0
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$LOGS/pip.txt" 2>&1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
pack() {   # the logs so far into $OUT: if the call is killed at its time limit, what ran still comes back
  tar -czf "$OUT/logs-$TAG.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.npy' -C /tmp gpu-logs gpu-runs 2>/dev/null
}
say() { echo "$*" >> "$SUMMARY"; pack; }
T0=$(date +%s)
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'python', platform.python_version())"
} > "$LOGS/env.txt" 2>&1
say "# stages: $STAGES; $(tr '\n' ';' < "$LOGS/env.txt")"

curve() {   # validation perplexity against training seconds of run folder $1
  python3 - "$1" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
if not (run / "metrics.jsonl").is_file():
    sys.exit(f"  no metrics.jsonl in {run}: the run ended before its first record (see its log)")
for line in (run / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["type"] == "fit_epochs":
        print(f"fit_epochs: {r['epochs']} epochs, {1000 * r['step_s']:.1f} ms per window, validation {r['val_s']:.2f} s")
    elif r["type"] == "averaging":
        print(f"  averaging the iterates from step {r['step']} ({r['reason']})")
    elif r["type"] in ("valid", "stop"):
        extra = "".join(f" {k} {r[k]:.3f}" for k in ("alignment_accuracy", "cer") if k in r)
        ppl = f" ppl {r['val_ppl']:.2f}" if "val_ppl" in r else ""
        print(f"  {r['type']:5} step {r['step']:>6} epoch {r['epoch']:>4} elapsed {r.get('elapsed_s', 0):>7.1f} s val_loss {r['val_loss']:.4f}{ppl}{extra}")
res = run / "results.json"
if res.exists():
    print("results:", res.read_text().replace("\n", " "))
EOF
}

for stage in $STAGES; do
  s0=$(date +%s)
  case $stage in
    quick)
      timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu_paths.py tests/test_las_precision.py \
        tests/test_deterministic.py "tests/test_budget.py::test_timing_leaves_weights_optimizer_data_position_and_random_state_untouched" \
        "tests/test_test_time.py::test_test_time_methods_read_back_once_per_pass_not_per_segment" \
        > "$LOGS/tests.txt" 2>&1
      say "## tests: $(tail -n 1 "$LOGS/tests.txt")"
      timeout 150 python3 benchmarks/bench_lm_train.py --config "$BENCH_CONFIG" --steps 10 --graph --profile 5 > "$LOGS/bench_lm.txt" 2>&1
      say "## bench_lm_train.py --config $BENCH_CONFIG --steps 10 --graph --profile 5 (rc $?)"; grep -E '^[|#]' "$LOGS/bench_lm.txt" >> "$SUMMARY"
      timeout 110 python3 benchmarks/bench_las.py --batches 10 --profile 5 > "$LOGS/bench_las.txt" 2>&1
      say "## bench_las.py --batches 10 --profile 5 (rc $?)"; grep -v '^\s*$' "$LOGS/bench_las.txt" | grep -v '^Warn' | tail -n 24 >> "$SUMMARY"
      timeout 90 python3 benchmarks/bench_dynamic_eval.py --config "$BENCH_CONFIG" --segments 300 > "$LOGS/bench_de.txt" 2>&1
      say "## bench_dynamic_eval.py --segments 300 (rc $?)"; grep -E '^[|#]' "$LOGS/bench_de.txt" >> "$SUMMARY"
      timeout 60 python3 benchmarks/check_las_precision.py > "$LOGS/las_precision.txt" 2>&1
      say "## check_las_precision.py (rc $?)"; cat "$LOGS/las_precision.txt" >> "$SUMMARY"
      timeout 100 python3 -m lstmkit las train --config "$LAS" --max-minutes 1 --run-id toy-auto --runs-dir "$RUNS" \
        > "$LOGS/las_auto.txt" 2>&1
      say "## LAS toy, 1 minute, precision auto (bf16 on CUDA) (rc $?)"; curve "$RUNS/toy-auto" >> "$SUMMARY" 2>&1 ;;
    resume)
      timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
        "tests/test_resume_stop.py::test_lm_stop_then_resume_at_any_step_equals_the_uninterrupted_run[cuda]" \
        "tests/test_resume_stop.py::test_las_stop_then_resume_equals_the_uninterrupted_run_and_keeps_training_mode[cuda]" \
        tests/test_test_time.py > "$LOGS/resume.txt" 2>&1
      say "## resume on the GPU, test-time methods (rc $?): $(tail -n 1 "$LOGS/resume.txt")"
      grep -E "^(FAILED|ERROR)" "$LOGS/resume.txt" >> "$SUMMARY" ;;
    las-fp32)
      timeout 100 python3 -m lstmkit las train --config "$LAS" --max-minutes 1 --run-id toy-fp32 --runs-dir "$RUNS" \
        --set 'train.precision="fp32"' > "$LOGS/las_fp32.txt" 2>&1
      say "## LAS toy, 1 minute, fp32 (rc $?)"; curve "$RUNS/toy-fp32" >> "$SUMMARY" 2>&1 ;;
    compile)
      timeout 240 python3 benchmarks/bench_lm_train.py --config "$BENCH_CONFIG" --steps 10 --compile --graph --only lstmkit,compile,graph \
        > "$LOGS/bench_compile.txt" 2>&1
      say "## bench_lm_train.py --compile --graph --only lstmkit,compile,graph (rc $?)"; grep -E '^[|#]' "$LOGS/bench_compile.txt" >> "$SUMMARY" ;;
    recipe)
      timeout 520 python3 -m lstmkit lm train --config "$RECIPE" --run-id wt2-gpu --runs-dir "$RUNS" > "$LOGS/recipe.txt" 2>&1
      say "## lm train --config $RECIPE (rc $?)"; curve "$RUNS/wt2-gpu" >> "$SUMMARY" 2>&1 ;;
    testtime)
      timeout 240 python3 -m lstmkit lm eval "$RUNS/wt2-gpu" --split test --cache --dynamic-eval > "$LOGS/testtime.txt" 2>&1
      say "## lm eval wt2-gpu --split test --cache --dynamic-eval (rc $?)"; tail -n 15 "$LOGS/testtime.txt" >> "$SUMMARY" ;;
    suite)
      timeout 540 python3 -m pytest -q -p no:cacheprovider -o addopts="" --ignore=tests/test_install.py \
        --ignore=tests/test_notebooks.py tests > "$LOGS/suite.txt" 2>&1
      say "## the test suite on this machine: trainers take CUDA under device = auto (rc $?)"
      grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$LOGS/suite.txt" | tail -n 40 >> "$SUMMARY" ;;
    *) say "unknown stage $stage (quick, recipe, resume, las-fp32, compile, testtime, suite)" ;;
  esac
  say "# stage $stage: $(( $(date +%s) - s0 )) s"
done
say "# total $(( $(date +%s) - T0 )) s"
pack
cat "$SUMMARY"
