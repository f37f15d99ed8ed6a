#!/usr/bin/env bash
# The GPU checks of issue 18 as one script for the `device` tool (an H200 session; see
# benchmarks/README.md "GPU"). Writes every log under $OUT. Expects the wheels the machine lacks in
# .whl/ (carried); the device tool's README says how to download them.
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=590)
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
# 1. CUDA-parametrized tests: flat buffer (no cuDNN copy warning), device step without sync, LAS bf16 cells
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py tests/test_las_precision.py > "$OUT/tests.txt" 2>&1
# 2. LM training speed, paper config, with and without fastai rows (fastai only if its wheels came)
timeout 200 python3 benchmarks/bench_lm_train.py --config configs/wt2.toml --steps 10 > "$OUT/bench_lm.txt" 2>&1
# 3. LAS toy under bf16 (default) and fp32, one minute each: alignment_accuracy in metrics.jsonl
for prec in auto fp32; do
  timeout 100 python3 -m lstmkit las train --config configs/las-toy.toml --max-minutes 1 --run-id "toy-$prec" \
    --runs-dir /tmp/runs --set "train.precision=\"$prec\"" > "$OUT/las_$prec.txt" 2>&1
  grep '"valid"\|"stop"' /tmp/runs/toy-$prec/metrics.jsonl >> "$OUT/las_$prec.txt" 2>/dev/null
done
echo done > "$OUT/done.txt"
