#!/usr/bin/env bash
# The prepared device check of twins-np on a real GPU (issue 12): `make gpu-check OUT=DIR`
# or `bash tools/gpu_check.sh [OUTDIR]` (default build/gpu-check/).
#
# Made for the GPU machine as it is: Python 3.12 with cupy-cuda13x, numpy, torch + timm,
# pytest and xdist installed system-wide; no internet, no virtualenv, no pip install, no
# jupyter. So: `python3` (or $PYTHON) with PYTHONPATH=<repo>, and the notebooks run as their
# jupytext .py sources with TWINS_NP_DEVICE=gpu.
#
# Six steps, in this order, each time-boxed with `timeout` so a slow one cannot eat the
# rest; all of it in at most 8 minutes (BUDGET seconds, default 470). The first CuPy step
# compiles kernels on a fresh machine (a minute or more): step 1 does that once, on a
# teaching model, so later steps find them in CuPy's kernel cache.
#
# Notebooks 09 and 10 train thousands of steps of tiny models: on a GPU each step is bound by
# the host's cost of its ~2,000 CuPy calls (a few microseconds each), not by the GPU; they
# make about 30 million calls each, the other notebooks at most 71,000
# (`python tools/standin_notebook.py` counts them without a GPU). So they start right after
# step 1, in the background, beside steps 2 and 3 (which measure no time), with the budget of
# steps 2 to 4 (LONG_SECS); step 4 waits for them, so the benchmark steps never share the GPU
# with them.
#   1. device and versions (+ kernel warm-up)         2. pytest -m gpu (xdist, junit summary)
#   3. whole-model float64 parity, CuPy vs timm CUDA   4. every notebook with TWINS_NP_DEVICE=gpu
#   5. one-epoch `twins-np train --device gpu`         6. the GPU benchmark: models, then (7) layers
#                                                         unfused and fused (whatever time is left)
# It writes OUTDIR/report.md (appended step by step, so a killed run still leaves one), the
# benchmark JSONs OUTDIR/benchmark-gpu.json and benchmark-gpu-ops.json, the junit XML and one
# log per step.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/build/gpu-check}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-470}
mkdir -p "$OUT" "$OUT/notebooks"
OUT=$(cd "$OUT" && pwd)
REPORT=$OUT/report.md
cd "$ROOT" || exit 2

export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export MPLBACKEND=Agg TQDM_DISABLE=1 CUPY_TF32=0 PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
SUMMARY=()

elapsed() { echo $(($(date +%s) - START)); }

# budget NAME SECONDS: the step's own budget, cut to what is left of the whole (min 10 s)
budget() {
    local left=$((BUDGET - $(elapsed)))
    local b=$2
    ((b > left)) && b=$left
    ((b < 10)) && b=10
    echo "$b"
}

# step N TITLE SECONDS CMD...: run CMD under `timeout`, log it, append to the report
step() {
    local n=$1 title=$2 secs=$3
    shift 3
    local log=$OUT/step$n.log t0 rc status
    t0=$(date +%s)
    echo "== step $n: $title (at most ${secs} s): $*" >&2
    timeout -k 5 "$secs" "$@" >"$log" 2>&1
    rc=$?
    local dt=$(($(date +%s) - t0))
    if ((rc == 0)); then status="ok"; elif ((rc == 124 || rc == 137)); then status="TIMED OUT"; else status="FAILED (exit $rc)"; fi
    SUMMARY+=("| $n | $title | $status | ${dt} s |")
    {
        echo
        echo "## $n. $title: $status, ${dt} s (budget ${secs} s)"
        echo
        echo "\`$*\`"
        echo
        echo '```'
        tail -n "${TAIL:-40}" "$log"
        echo '```'
    } >>"$REPORT"
    echo "   -> $status in ${dt} s" >&2
    return 0
}

{
    echo "# twins-np GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "Record the figures below in benchmarks/RESULTS.md (device named, versions, parity, benchmark table)."
} >"$REPORT"

# --- 1. device, versions, kernel warm-up --------------------------------------------------
cat >"$OUT/device.py" <<'EOF'
import platform, time
import numpy as np
import twins_np
from twins_np import backend
print("python", platform.python_version(), "| numpy", np.__version__, "| twins-np", twins_np.__version__)
print("cupy", backend.cupy_version(), "| cupy_available", backend.cupy_available(), "| GPU", backend.gpu_description())
try:
    import torch, timm
    print("torch", torch.__version__, "| cuda", torch.version.cuda, "| timm", timm.__version__,
          "| torch sees", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
except Exception as e:
    print("torch/timm:", type(e).__name__, e)
if not backend.cupy_available():
    raise SystemExit("no GPU visible to CuPy: the remaining steps will fail")
for name in ("twins_svt_teach32", "twins_pcpvt_teach32"):
    m = twins_np.create_model(name, num_classes=10).to_device("gpu")
    x = backend.to_device(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32), "gpu")
    y = backend.to_device(np.arange(4) % 10, "gpu")
    for i in range(2):
        t0 = time.perf_counter(); m.zero_grad(); m.loss(x, y); m.backward_loss(); backend.synchronize()
        print(f"{name} train step {i + 1}: {time.perf_counter() - t0:.2f} s" + (" (compiles CuPy kernels)" if i == 0 else ""))
EOF
step 1 "device and versions" "$(budget 1 75)" bash -c "command -v nvidia-smi >/dev/null && nvidia-smi -L; \"$PY\" \"$OUT/device.py\""

# --- notebooks 09 and 10, started early (see the top) ------------------------------------
LONG_NOTEBOOKS=${LONG_NOTEBOOKS:-09_training_and_ablations 10_dense_prediction}
LONG_SECS=$(budget 4 $((110 + 50 + 130)))
for name in $LONG_NOTEBOOKS; do
    [ -f "$ROOT/notebooks/$name.py" ] || continue
    ( cd "$OUT/notebooks" || exit 2
      t0=$(date +%s)
      TWINS_NP_DEVICE=gpu OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 timeout -k 5 "$LONG_SECS" "$PY" "$ROOT/notebooks/$name.py" \
          >"$name.log" 2>&1
      echo "$? $(($(date +%s) - t0))" >"$name.rc.tmp" && mv "$name.rc.tmp" "$name.rc" ) &
    echo "$name started at $(elapsed) s, at most $LONG_SECS s" >"$OUT/notebooks/$name.early"
done
LONG_STARTED=$(elapsed)

# --- 2. the gpu test suite ----------------------------------------------------------------
step 2 "pytest -m gpu" "$(budget 2 110)" "$PY" -m pytest tests -m gpu -n "${JOBS:-4}" -q -p no:cacheprovider \
    --junitxml="$OUT/pytest-gpu.xml"
"$PY" - "$OUT/pytest-gpu.xml" >>"$REPORT" 2>&1 <<'EOF' || echo "(no junit summary)" >>"$REPORT"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
a = suite.attrib
print(f"\njunit: {a.get('tests')} tests, {a.get('failures')} failures, {a.get('errors')} errors, {a.get('skipped')} skipped, {float(a.get('time', 0)):.0f} s")
bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
for name in bad[:40]:
    print(f"- FAILED {name}")
EOF

# --- 3. whole-model float64 parity, CuPy vs timm on CUDA --------------------------------
step 3 "float64 parity CuPy vs timm CUDA (100x132)" "$(budget 3 50)" "$PY" tools/gpu_parity.py --size 100 132 --device gpu

# --- 4. every notebook on the GPU (in parallel, one BLAS thread each) ---------------------
cat >"$OUT/notebooks.sh" <<'EOF'
# run every notebooks/NN_*.py with TWINS_NP_DEVICE=gpu from OUT/notebooks; one line per notebook.
# A notebook with a NAME.early file was started before (09, 10): wait for its NAME.rc.
PY=$1 ROOT=$2 OUT=$3 SECS=$4 WAIT=$5
start=$(date +%s)
cd "$OUT/notebooks" || exit 2
for nb in "$ROOT"/notebooks/[0-9]*.py; do
    name=$(basename "$nb" .py)
    [ -f "$name.early" ] && continue
    ( t0=$(date +%s)
      TWINS_NP_DEVICE=gpu OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 timeout -k 5 "$SECS" "$PY" "$nb" >"$name.log" 2>&1
      echo "$? $(($(date +%s) - t0))" >"$name.rc" ) &
done
wait
for early in *.early; do
    [ -f "$early" ] || continue
    name=${early%.early}
    while [ ! -f "$name.rc" ] && (($(date +%s) - start < WAIT)); do sleep 1; done
    [ -f "$name.rc" ] || echo "124 $WAIT" >"$name.rc"  # its own timeout should have come first
done
fail=0
for nb in "$ROOT"/notebooks/[0-9]*.py; do
    name=$(basename "$nb" .py)
    read -r rc dt <"$name.rc"
    ((rc == 0)) || fail=1
    status=ok; ((rc == 124 || rc == 137)) && status="TIMED OUT"; ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
    echo "$name: $status, ${dt} s | $(grep -v '^\s*$' "$name.log" | tail -n 1 | cut -c1-150)"
done
exit $fail
EOF
NB_SECS=$(budget 4 130)
# the early notebooks' own timeout ends LONG_SECS after step 1; wait for them until then (+ 10 s)
EARLY_LEFT=$((LONG_SECS + 10 - ($(date +%s) - START) + ${LONG_STARTED:-0}))
((EARLY_LEFT < NB_SECS)) && EARLY_LEFT=$NB_SECS
step 4 "notebooks with TWINS_NP_DEVICE=gpu" "$((EARLY_LEFT + 10))" bash "$OUT/notebooks.sh" "$PY" "$ROOT" "$OUT" "$NB_SECS" \
    "$EARLY_LEFT"

# --- 5. one epoch of twins-np train on the GPU -------------------------------------------
step 5 "twins-np train --device gpu, 1 epoch" "$(budget 5 45)" "$PY" -m twins_np train --device gpu --epochs 1 \
    --out "$OUT/train" --overwrite

# --- 6. the GPU benchmark, with whatever time is left ------------------------------------
# run_all writes its JSON after every row, so a timed-out run still leaves the rows it measured.
# The models first (the targets are about the training step), then the layers, unfused and
# fused, if at least a minute is left.
step 6 "benchmark: models, twins-np on CuPy vs timm on CUDA" "$(budget 6 $((BUDGET - $(elapsed) - 60)))" \
    "$PY" -m benchmarks.run_all --device gpu --rounds 1 --only models --out "$OUT/benchmark-gpu.json"
step 7 "benchmark: layers, unfused and fused vs torch" "$(budget 7 $((BUDGET - $(elapsed))))" \
    "$PY" -m benchmarks.run_all --device gpu --rounds 1 --only ops --out "$OUT/benchmark-gpu-ops.json"

{
    echo
    echo "## Summary ($(elapsed) s in all)"
    echo
    echo "| step | what | result | time |"
    echo "|---|---|---|---|"
    printf '%s\n' "${SUMMARY[@]}"
} >>"$REPORT"
echo "report: $REPORT ($(elapsed) s)" >&2
