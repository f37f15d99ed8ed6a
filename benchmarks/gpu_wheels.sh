#!/usr/bin/env bash
# Download, here, the cp312 wheels that the H200 device machine lacks (its image has torch, numpy,
# scipy, matplotlib, pandas, scikit-learn, pytest, tensorboard, ...; see the device tool's KINDS.md)
# into .whl/, which `git` ignores and the `device` tool carries: lstmkit's own needs, and fastai with
# its pure-Python needs for the peer rows of bench_lm_train.py. Run from the repository root.
#   bash benchmarks/gpu_wheels.sh && run(command="bash benchmarks/gpu_check.sh quick", carry=[".whl"])
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
mkdir -p .whl
PY=${PYTHON:-python3}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 manylinux_2_5_x86_64 any; do
  platforms+=(--platform "$p")
done
want=(rapidfuzz soundfile kaldi-native-fbank cffi pycparser
      fastai==2.8.12 fastcore fasttransform fastprogress fastdownload "plum-dispatch<2.10" beartype)
for w in "${want[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$w"
done
ls -la .whl
du -sh .whl
