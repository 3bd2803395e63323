#!/usr/bin/env bash
# Every GPU measurement of benchmarks/README.md in one go, within about 9 minutes.
#
#   OUT=/some/dir bash benchmarks/run_on_gpu.sh [CIFAR10_SOURCE]
#
# CIFAR10_SOURCE: the cifar10-jpg.tar.gz of ../shared/data (default .gpu-data/cifar10-jpg.tar.gz,
# a copy carried to a machine that cannot reach ../shared), or a dataset name or folder that
# klteach loads directly ("cifar10" for the official archive in data/ or $KLTEACH_DATA). The
# machine needs no network.
#
# A dry run on a CPU with tiny settings (proves every step runs end to end). On a shared CPU
# importing torch alone can take a minute, so LIMIT_SCALE stretches every step's time limit and
# TOTAL_SECONDS the whole (to check the extraction too, pass a tarball of the same layout with a
# few images per class instead of cifar10-sample: benchmarks/README.md says how it was made):
#   OUT=/tmp/dry DEVICE=cpu ARCH=cnn BATCH=16 BATCHES="8 16" BENCH_STEPS=2 WARMUP=1 \
#     QUALITY_MINUTES=0.1 QUALITY_ARGS="--eval-size 200 --calibrate-steps 4 --warmup-steps 4 --clusters 10" \
#     COMPILE=0 LIMIT_SCALE=6 TOTAL_SECONDS=3600 bash benchmarks/run_on_gpu.sh cifar10-sample
#
# Writes at most 8 files, all directly in $OUT (what a device lease hands back):
#   log.txt                   everything printed, with nvidia-smi
#   bench.json                python -m klteach bench: ResNet-18, batch 512, eager: images/s, s/epoch,
#                             peak memory, FLOPs per image and MFU, overhead against a plain PyTorch loop
#   bench_compile.json        the same with --compile (last; skipped if time is short)
#   memory_vs_batch_cuda.json peak memory and images/s for batch 128..2048
#   sync_check.json           host-device syncs inside Trainer.train_step, by source line
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
LIMIT_SCALE=${LIMIT_SCALE:-1}
QUALITY_MINUTES=${QUALITY_MINUTES:-1.5}
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-resnet18}
BATCH=${BATCH:-512}
BATCHES=${BATCHES:-128 256 512 1024 2048}
BENCH_STEPS=${BENCH_STEPS:-50}
WARMUP=${WARMUP:-10}
QUALITY_ARGS=${QUALITY_ARGS:-}
COMPILE=${COMPILE:-1}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SOURCE=${1:-.gpu-data/cifar10-jpg.tar.gz}

log() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, never past the overall deadline.
step() {
    local name=$1 limit=$(($2 * LIMIT_SCALE))
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
if [[ $DEVICE == cuda ]]; then
    nvidia-smi 2>&1 | tee -a "$LOG"
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee -a "$LOG"

if [[ $SOURCE == *.tar.gz ]]; then
    DATA_ROOT=${TMPDIR:-/tmp}/klteach-data
    mkdir -p "$DATA_ROOT"
    tar -xzf "$SOURCE" -C "$DATA_ROOT" || { log "cannot extract $SOURCE"; exit 2; }
    DATASET=$DATA_ROOT/cifar10-jpg
else
    DATASET=$SOURCE
fi
log "dataset: $DATASET, device: $DEVICE, arch: $ARCH, batch: $BATCH"

# BATCHES and QUALITY_ARGS are lists of words: left unquoted on purpose
step bench 120 $PY -m klteach bench --dataset "$DATASET" --arch "$ARCH" --batch-size "$BATCH" \
    --bench-steps "$BENCH_STEPS" --warmup "$WARMUP" --device "$DEVICE" --json "$OUT/bench.json"
step memory 120 $PY benchmarks/memory_vs_batch.py --dataset "$DATASET" --arch "$ARCH" --device "$DEVICE" \
    --batch-sizes $BATCHES --steps 5 --warmup 3 --out "$OUT/memory_vs_batch_$DEVICE.json"
if [[ $DEVICE == cuda ]]; then
    step sync 90 $PY benchmarks/gpu_sync_check.py --dataset "$DATASET" --json "$OUT/sync_check.json"
fi
step prior 120 $PY benchmarks/prior_cost.py --case "$DATASET:$ARCH" --device "$DEVICE" --repeats 3 \
    --out "$OUT/prior_cost_$DEVICE.json"
step quality 300 $PY benchmarks/gpu_full.py --dataset "$DATASET" --minutes "$QUALITY_MINUTES" --evals 3 \
    --calibrate-steps 30 --warmup-steps 100 --arch "$ARCH" --batch-size "$BATCH" --device "$DEVICE" $QUALITY_ARGS \
    --out-dir "$OUT"
if [[ $COMPILE == 1 ]]; then
    step bench-compile 200 $PY -m klteach bench --dataset "$DATASET" --arch "$ARCH" --batch-size "$BATCH" \
        --bench-steps "$BENCH_STEPS" --warmup "$WARMUP" --device "$DEVICE" --compile --json "$OUT/bench_compile.json"
fi
log "done after ${SECONDS}s; files: $(ls "$OUT" | tr '\n' ' ')"
