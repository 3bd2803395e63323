#!/usr/bin/env bash
# Every GPU measurement of benchmarks/README.md in one go, within about 9 minutes.
#
#   OUT=/some/dir bash benchmarks/run_on_gpu.sh [CIFAR10_SOURCE]
#
# CIFAR10_SOURCE: the cifar10-jpg.tar.gz of ../shared/data (default .gpu-data/cifar10-jpg.tar.gz,
# a copy carried to a machine that cannot reach ../shared), or "cifar10" to use the official
# archive in data/ or $KLTEACH_DATA. The machine needs no network.
#
# Writes at most 8 files, all directly in $OUT (what a device lease hands back):
#   log.txt                   everything printed, with nvidia-smi
#   bench.json                python -m klteach bench: ResNet-18, batch 512, eager
#   bench_compile.json        the same with --compile (last; skipped if time is short)
#   memory_vs_batch_cuda.json peak memory and images/s for batch 128..2048
#   sync_check.json           host-device syncs inside Trainer.step, by source line
#   prior_cost_cuda.json      eq. (15) whole-set prior pass: library vs lean, + FLOP counts
#   gpu_<device>_<normaliser>.json  short quality runs (kNN vs training time), one per normaliser
# Each step has its own time limit and the whole script stops starting steps after
# $TOTAL_SECONDS (default 540), so a slow step cannot lose the results of the others.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
TOTAL_SECONDS=${TOTAL_SECONDS:-540}
QUALITY_MINUTES=${QUALITY_MINUTES:-1.5}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SOURCE=${1:-.gpu-data/cifar10-jpg.tar.gz}

log() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, never past the overall deadline.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL_SECONDS - SECONDS))
    if ((left < 30)); then
        log "=== $name SKIPPED: only ${left}s left of ${TOTAL_SECONDS}s"
        return
    fi
    ((limit > left)) && limit=$left
    log "=== $name (limit ${limit}s, at ${SECONDS}s) $(date -u +%FT%TZ)"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    log "=== $name exit ${PIPESTATUS[0]} after ${SECONDS}s"
}

log "klteach GPU benchmarks, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi 2>&1 | tee -a "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"

if [[ $SOURCE == cifar10 ]]; then
    DATASET=cifar10
else
    DATA_ROOT=${TMPDIR:-/tmp}/klteach-data
    mkdir -p "$DATA_ROOT"
    tar -xzf "$SOURCE" -C "$DATA_ROOT" || { log "cannot extract $SOURCE"; exit 2; }
    DATASET=$DATA_ROOT/cifar10-jpg
fi
log "dataset: $DATASET"

step bench 120 $PY -m klteach bench --dataset "$DATASET" --arch resnet18 --batch-size 512 \
    --bench-steps 50 --warmup 10 --device cuda --json "$OUT/bench.json"
step memory 120 $PY benchmarks/memory_vs_batch.py --dataset "$DATASET" --arch resnet18 --device cuda \
    --batch-sizes 128 256 512 1024 2048 --steps 5 --warmup 3 --out "$OUT/memory_vs_batch_cuda.json"
step sync 90 $PY benchmarks/gpu_sync_check.py --dataset "$DATASET" --json "$OUT/sync_check.json"
step prior 120 $PY benchmarks/prior_cost.py --case "$DATASET:resnet18" --device cuda --repeats 3 \
    --out "$OUT/prior_cost_cuda.json"
step quality 300 $PY benchmarks/gpu_full.py --dataset "$DATASET" --minutes "$QUALITY_MINUTES" --evals 3 \
    --calibrate-steps 30 --warmup-steps 100 --out-dir "$OUT"
step bench-compile 200 $PY -m klteach bench --dataset "$DATASET" --arch resnet18 --batch-size 512 \
    --bench-steps 50 --warmup 10 --device cuda --compile --json "$OUT/bench_compile.json"
log "done after ${SECONDS}s; files: $(ls "$OUT" | tr '\n' ' ')"
