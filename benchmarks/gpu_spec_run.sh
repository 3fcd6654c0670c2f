#!/usr/bin/env bash
# Issue 3 on one lent GPU, shaped by the device tool's limits (/work/.library/device/README.md): a
# call runs at most 600 s and a session gets 15 minutes of device time; at most 64 MiB travels per
# call, and the tracked tree (35 MB, the bundled weights included) leaves about 32 MB, so FER2013's
# 58 MB goes in two halves over two calls (files kept on the machine between calls while it is
# warm, 30 s); at most 8 files of 16 MiB come back from $OUT, so run folders stay on the machine
# and only logs and JSON are copied there.
#
#   bash benchmarks/gpu_spec_run.sh prepare
#       here, once: every other file of ../shared/data/fer2013 (or $FER2013) into .data/gpu_part_a,
#       the rest into .data/gpu_part_b; each half keeps the whole folder layout.
#   device run 1, timeout_s 240, carry [".data/gpu_part_a"]:  OUT=$OUT bash benchmarks/gpu_spec_run.sh check
#       GPU and torch versions; the CUDA tests; the bf16-vs-fp32 check (the same PARITY_EPOCHS-epoch
#       run, default 5, one seed, both precisions, on half a: its PrivateTest half reports). With
#       THROUGHPUT=1 also eager against torch.compile images/s at batch 512 (train_throughput.py),
#       for a session with device time to spare: the 15 minutes hold a machine start, this call
#       and the spec call, and little more.
#   device run 2, at once, timeout_s 600, carry [".data/gpu_part_b"]:  OUT=$OUT bash benchmarks/gpu_spec_run.sh spec
#       joins the halves; trains the full specification (96x96, 100 epochs, clean protocol, batch 512
#       with the sqrt lr rule, the GPU fast path: batched augmentation on the GPU, bf16,
#       channels_last, fused AdamW); stops itself gracefully (SIGTERM: last.pth saved) before the
#       call's limit; measures best.pth on PrivateTest with benchmarks/fer2013_accuracy.py.
#
# Extra arguments go to every `ferkit train` (e.g. --compile). A dry run of the whole flow on a CPU:
#   DRY_RUN=1 bash benchmarks/gpu_spec_run.sh prepare check spec
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # no pip: the device has no registry
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_out}
mkdir -p "$OUT" runs
PARTS=(.data/gpu_part_a .data/gpu_part_b)
DATA=.data/fer2013
BATCH=${BATCH:-512}
EPOCHS=${EPOCHS:-100}
PARITY_EPOCHS=${PARITY_EPOCHS:-5}
DEADLINE_S=${DEADLINE_S:-570}  # of the spec phase, under the call's 600 s
DRY=()
if [ -n "${DRY_RUN:-}" ]; then  # the same flow in minutes on a CPU
  DRY=(--limit-per-class 6 --image-size 32 --batch-size 8 --workers 0)
  EPOCHS=1 PARITY_EPOCHS=1 BATCH=8
fi
TRAIN=("$PY" -m ferkit train --protocol clean --batch-size "$BATCH" --overwrite --no-tensorboard)
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

prepare() {
  "$PY" - "${FER2013:-../shared/data/fer2013}" "${PARTS[@]}" <<'EOF'
import shutil, sys
from pathlib import Path
source, parts = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
files = sorted(p for p in source.rglob("*") if p.is_file() and p.parent != source)
if len(files) < 30000:
    sys.exit(f"{source} holds {len(files)} files, not FER2013's 35,887: set FER2013=PATH")
for part in parts:
    shutil.rmtree(part, ignore_errors=True)
for i, f in enumerate(files):
    target = parts[i % 2] / f.relative_to(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(f, target)
for part in parts:
    size = sum(p.stat().st_size for p in part.rglob("*") if p.is_file())
    print(f"{part}: {sum(1 for p in part.rglob('*') if p.is_file())} files, {size / 1e6:.1f} MB")
EOF
}

gpu_info() {
  "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
}

check() {
  gpu_info
  "$PY" -m pytest -q -p no:cacheprovider tests/test_fastdata.py tests/test_fastpath.py -k "cuda or fused" || true
  for precision in fp32 bf16; do
    "${TRAIN[@]}" --data "${PARTS[0]}" --epochs "$PARITY_EPOCHS" --seed 0 --precision "$precision" \
      --out "runs/parity_$precision" "${DRY[@]}" "$@"
    cp "runs/parity_$precision/report.json" "$OUT/parity_$precision.json"
  done
  "$PY" - <<'EOF'
import json
for p in ("fp32", "bf16"):
    r = json.load(open(f"runs/parity_{p}/report.json"))
    print(f"parity {p}: {r['split']} ({r['images']} images) accuracy {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f}, "
          f"{r['train_minutes']} min of training")
EOF
  [ -n "${THROUGHPUT:-}" ] || return 0  # 2-3 more minutes of device time
  local steps=(--steps 30 --warmup 5)
  [ -n "${DRY_RUN:-}" ] && steps=(--steps 1 --warmup 0 --image-size 32 --limit 64)
  "$PY" benchmarks/train_throughput.py --data "${PARTS[0]}" --batch-size "$BATCH" "${steps[@]}" \
    --variants fast+channels_last,fast+channels_last+compile --json "$OUT/throughput.json"
}

spec() {
  gpu_info
  rm -rf "$DATA" && mkdir -p "$DATA"
  for part in "${PARTS[@]}"; do
    [ -d "$part" ] || { echo "missing $part: the machine was given back between the two calls; run check again first"; exit 2; }
    cp -r "$part/." "$DATA/"
  done
  echo "FER2013 joined: $(find "$DATA" -type f | wc -l) files"
  local data_flags=(--data "$DATA")
  # The run gets what is left of the deadline after a reserve for the accuracy pass and the copies.
  local budget=$(( DEADLINE_S - $(elapsed) - 60 ))
  [ "$budget" -ge 30 ] || { echo "only $budget s left before the deadline (DEADLINE_S=$DEADLINE_S): nothing run"; exit 2; }
  rm -rf runs/gpu_spec
  echo "spec run: --epochs $EPOCHS $*, at most $budget s (SIGTERM then: last.pth saved, the run stops)"
  local t0
  t0=$(date +%s)
  timeout -s TERM -k 30 "$budget" "${TRAIN[@]}" "${data_flags[@]}" --epochs "$EPOCHS" --workers 8 \
    --out runs/gpu_spec "${DRY[@]}" "$@" || echo "ferkit train exit status $? (124: stopped at the deadline, last.pth saved)"
  echo "spec run wall seconds: $(( $(date +%s) - t0 ))"
  cp runs/gpu_spec/train.log runs/gpu_spec/metrics.csv "$OUT/"
  [ -f runs/gpu_spec/report.json ] && cp runs/gpu_spec/report.json "$OUT/"
  "$PY" benchmarks/fer2013_accuracy.py runs/gpu_spec "${data_flags[@]}" --workers 8 --json "$OUT/accuracy.json"
}

[ $# -gt 0 ] || { sed -n '2,30p' "$0"; exit 2; }
phases=()
while [ $# -gt 0 ] && [[ $1 != -* ]]; do phases+=("$1"); shift; done
for phase in "${phases[@]}"; do
  case $phase in
    prepare|check|spec) "$phase" "$@" 2>&1 | tee "$OUT/$phase.log" ;;
    *) echo "unknown phase $phase: use prepare, check or spec"; exit 2 ;;
  esac
done
