#!/usr/bin/env bash
# One command on a bare GPU machine (PyTorch present, no network): install the carried wheels, run
# bench/gpu_phases.py, and leave results.json, results.md and the logs in $OUT (or ./runs/bench-gpu-out).
# Why: device time is scarce; everything is prepared and checked on CPU first (bench/gpu_phases.py --quick,
# and this script with BENCH_PYTHON pointing at a clean interpreter), so one call does the whole job.
#
# Usage (from the repository root): bash bench/gpu/run_device.sh [gpu_phases.py arguments ...]
# Environment:
#   WHEELS        folder of wheels made by bench/gpu/fetch_wheels.sh (default .whl)
#   BENCH_PYTHON  interpreter that has torch (default python3)
#   SITE          where the wheels are installed (default /tmp/site; put first on PYTHONPATH)
#   WORK          results and work folder (default /tmp/bench-gpu; the 7B model needs ~17 GB of disk)
#   OUT           folder whose files come back from the device (default runs/bench-gpu-out)
set -uo pipefail
cd "$(dirname "$0")/../.."
WHEELS=${WHEELS:-.whl}
PY=${BENCH_PYTHON:-python3}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/bench-gpu}
OUT=${OUT:-runs/bench-gpu-out}
mkdir -p "$OUT" "$WORK"
t0=$(date +%s)

ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run bench/gpu/fetch_wheels.sh first" >&2; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
  || { echo "installing the wheels into $SITE failed" >&2; exit 2; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME="$WORK/hf_home" TOKENIZERS_PARALLELISM=false
export DISABLE_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
echo "wheels installed in $(( $(date +%s) - t0 )) s"

{
  echo "== date: $(date -u +%FT%TZ)"
  echo "== nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv,noheader
  "$PY" - <<'PYEOF'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
for p in ("transformers", "peft", "accelerate", "trl", "datasets", "llamafactory", "bitsandbytes", "liger-kernel",
          "tokenizers", "qwenvl-roi", "triton", "numpy"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "missing")
import llamafactory  # noqa: F401  (fails here, not in the first run, if a dependency is missing)
print("llamafactory imports fine")
PYEOF
} 2>&1 | tee "$OUT/env.txt"
[[ ${PIPESTATUS[0]} == 0 ]] || { echo "environment check failed" >&2; exit 2; }

"$PY" bench/gpu_phases.py --out "$WORK" "$@" 2>&1 | tee "$OUT/gpu_phases.log"
rc=${PIPESTATUS[0]}
cp "$WORK/results.json" "$WORK/results.md" "$OUT/" 2>/dev/null
# One archive of every run's config and training log (the device returns at most 8 files).
(cd "$WORK" && tar czf - runs/*/config.yaml runs/*/train.log runs/*/metrics.json runs/*/profile.txt 2>/dev/null) > "$OUT/runs.tgz"
echo "run_device.sh: exit $rc after $(( $(date +%s) - t0 )) s"
exit "$rc"
