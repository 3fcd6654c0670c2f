#!/usr/bin/env bash
# A lent GPU's one call (/work/.library/device/README.md): a session gets 15 minutes of device time and a call
# runs at most 600 s, so the work runs in one call. JOBS (default "spec") picks what trains, side by side:
#   spec     the full specification (issue 3): 96x96, 100 epochs, clean protocol, batch 512 with the sqrt lr rule,
#            the GPU fast path (batched augmentation on the GPU, bf16, channels_last, fused AdamW) and torch.compile
#            (1.30x eager's images/s on an H200, 20 s to compile: BENCHMARKS.md);
#   bundled  the bundled model's recipe (issue 20, benchmarks/make_bundled.sh): a teacher at the `bundled` preset,
#            then a student distilled from it with SGD, here narrower and longer (STUDENT_ARGS), 3.89 PFLOP in all.
#            Beside the spec run its batch-64 steps wait for the GPU (26 ms a step on 2026-12-04): give it a call alone.
#            Both runs use torch.compile too (measured on the spec model only; eager again where it fails).
# The CUDA tests run first, beside them. Each run stops itself gracefully (SIGTERM: last.pth saved) at the deadline;
# best.pth is then measured on FER2013 and exported as fp16 safetensors (the shipped format), and logs, metrics
# and weights come back.
#
# What travels with a call is at most 64 MiB: the tracked tree (45.5 MB since the bundled model is a pair of
# networks, 39 MB of them) and what `carry` names. FER2013 as one xz tarball is 43.4 MB, so it travels in parts, one
# a call, into ignored folders that the warm machine keeps between calls (a machine given back loses them: it idles
# 30 s, so make the calls one after the other).
#
#   bash benchmarks/gpu_spec_run.sh prepare
#       here, once: ../shared/data/fer2013 (or $FER2013) into .data/p0/, .data/p1/, ... (parts that fit beside the
#       tracked tree), and prints the device calls to make, in order:
#   device run, timeout_s 60, carry [".data/p0"]:  bash benchmarks/gpu_spec_run.sh stage      (each part but the last)
#   device run, timeout_s 600, carry [".data/pN"]:  OUT=$OUT bash benchmarks/gpu_spec_run.sh run   (the last part)
#       `run` joins the parts (checked against the tarball's sha256) or says which part is missing; at most 8 files
#       of 16 MiB come back from $OUT: run.log, and the runs as gpu_runs.tar.partNN.
#   bash benchmarks/gpu_spec_run.sh unpack DIR
#       here, afterwards: the parts in DIR (the call's files_at) into runs/gpu/.
#
# A dry run of the whole flow on a CPU in minutes: DRY_RUN=1 JOBS="spec bundled" bash benchmarks/gpu_spec_run.sh prepare run
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # no pip: the device has no registry
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_out}
RUNS=runs/gpu
TARBALL=.data/fer2013.tar.xz  # made by prepare, travels as .data/pK/fer2013.tar.xz.partK and is joined again by run
DATA=.data/fer2013
DEADLINE_S=${DEADLINE_S:-525}  # for training, from the call's start; the rest of the 600 s measures and packs
STUDENT_ARGS=(--width 40 --epochs 92)
JOBS=${JOBS:-spec}
SPEC=(--protocol clean --batch-size 512 --epochs 100 --compile --workers 8)
DRY=()
if [ -n "${DRY_RUN:-}" ]; then  # the same flow in minutes on a CPU
  DRY=(--limit-per-class 6 --image-size 32 --batch-size 8 --workers 0 --epochs 1 --no-compile)
  STUDENT_ARGS=(--width 8)
fi
start=$(date +%s)
left() { echo $((DEADLINE_S - ($(date +%s) - start))); }

prepare() {
  "$PY" - "${FER2013:-../shared/data/fer2013}" "$TARBALL" <<'EOF'
import hashlib, os, shutil, subprocess, sys, tarfile
from pathlib import Path
source, target = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p for p in source.rglob("*") if p.is_file())
if sum(p.suffix == ".jpg" for p in files) < 35000 and "DRY_RUN" not in os.environ:
    sys.exit(f"{source} holds {len(files)} files, not FER2013's 35,887: set FER2013=PATH")
target.parent.mkdir(parents=True, exist_ok=True)
# xz's largest dictionary sees the JPEG headers that all 35,887 files repeat: 58.2 MB of files in 43.4 MB.
with tarfile.open(target, "w:xz", preset=9 | 0x80000000) as tar:
    for f in files:
        tar.add(f, arcname=str(Path("fer2013") / f.relative_to(source)))
# What else travels with every call: the tracked files, and the untracked ones git does not ignore.
listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                        check=True).stdout.split(b"\0")
tree = sum(Path(p.decode()).stat().st_size for p in listed if p and Path(p.decode()).is_file())
room = 64 * 2**20 - tree - 2 * 2**20  # 2 MiB to spare for the commits of a session
if room < 2**20:
    sys.exit(f"the tree that travels is {tree / 2**20:.1f} MiB: no room for FER2013 beside it")
data = target.read_bytes()
count = -(-len(data) // room)
size = -(-len(data) // count)
for old in target.parent.glob("p[0-9]*"):
    shutil.rmtree(old)
digest = hashlib.sha256(data).hexdigest()
for k in range(count):
    folder = target.parent / f"p{k}"
    folder.mkdir()
    (folder / f"{target.name}.part{k}").write_bytes(data[k * size : (k + 1) * size])
    (folder / "whole").write_text(f"{count} {len(data)} {digest}\n")
print(f"{target}: {len(data) / 1e6:.1f} MB in {count} parts of at most {size / 2**20:.1f} MiB, each beside the "
      f"tree that travels ({tree / 2**20:.1f} MiB), under the call's 64 MiB. The device calls, one after the other:")
for k in range(count - 1):
    print(f'  run  timeout_s 60   carry [".data/p{k}"]  command: bash benchmarks/gpu_spec_run.sh stage')
print(f'  run  timeout_s 600  carry [".data/p{count - 1}"]  command: [JOBS=bundled] OUT=$OUT bash '
      'benchmarks/gpu_spec_run.sh run')
EOF
}

stage() {  # on the device, a call carrying one part: which parts it now holds
  echo "parts here: $(ls .data/p*/*.part* 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
}

join_parts() {  # the parts back into the tarball, or which one is missing
  "$PY" - "$TARBALL" <<'EOF'
import hashlib, sys
from pathlib import Path
target = Path(sys.argv[1])
wholes = sorted(target.parent.glob("p[0-9]*/whole"))
if not wholes:
    sys.exit("no part of FER2013 is here: run prepare (here), then carry .data/p0 ... in the device calls")
count, size, digest = wholes[-1].read_text().split()
parts = [target.parent / f"p{k}" / f"{target.name}.part{k}" for k in range(int(count))]
missing = [str(p.parent) for p in parts if not p.is_file()]
if missing:
    sys.exit(f"missing {', '.join(missing)}: the machine was given back between calls; start again from the first")
data = b"".join(p.read_bytes() for p in parts)
if len(data) != int(size) or hashlib.sha256(data).hexdigest() != digest:
    sys.exit("the parts do not make the tarball prepare wrote (parts of two prepares?): prepare again")
target.write_bytes(data)
print(f"{target}: {count} parts joined, sha256 checked")
EOF
}

train() {  # train NAME ARGS...: a run under the deadline, its output in RUNS/NAME/
  local budget
  budget=$(left)
  [ "$budget" -ge 30 ] || { echo "$1: only $budget s left before the deadline; not started"; return 0; }
  echo "$1: started with at most $budget s: $*"
  timeout -s TERM -k 30 "$budget" "$PY" -m ferkit train --data "$DATA" --out "$RUNS/$1" --overwrite \
    --no-tensorboard "${@:2}" "${DRY[@]}" >"$RUNS/$1.out" 2>&1 ||
    echo "$1: exit status $? (124: stopped at the deadline, last.pth saved)"
  echo "$1: ended after $(($(date +%s) - start)) s; $(grep -c . "$RUNS/$1/metrics.csv" 2>/dev/null || echo 0) metric rows"
  if [[ " $* " == *" --compile "* && " $* " != *" --no-compile "* ]] && ! grep -q "^1," "$RUNS/$1/metrics.csv" 2>/dev/null; then
    echo "$1: no epoch with --compile; again eager"  # a compiler that fails at once
    train "$@" --no-compile
  fi
}

bundled_chain() {
  train teacher --preset bundled --compile
  [ -f "$RUNS/teacher/best.pth" ] || return 0
  train student --preset bundled --seed 0 --distill-from "$RUNS/teacher/best.pth" --label-smoothing 0 \
    --optimizer sgd --lr 0.05 --weight-decay 5e-4 --compile "${STUDENT_ARGS[@]}"
}

run() {
  "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  rm -rf "$RUNS" "$DATA" && mkdir -p "$RUNS" .data
  join_parts
  "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$TARBALL" .data
  echo "FER2013 unpacked: $(find "$DATA" -type f | wc -l) files, $(($(date +%s) - start)) s"
  local sampler=""
  if command -v nvidia-smi >/dev/null; then  # how busy the runs side by side keep the GPU
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 >"$RUNS/gpu_use.csv" 2>&1 &
    sampler=$!
  fi
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_fastdata.py tests/test_fastpath.py \
    -k "cuda or fused" >"$RUNS/cuda_tests.log" 2>&1 &
  local jobs=($!)
  for job in $JOBS; do
    case $job in
      spec) train spec "${SPEC[@]}" & ;;
      bundled) bundled_chain & ;;
      *) echo "unknown job $job in JOBS: use spec and/or bundled"; continue ;;
    esac
    jobs+=($!)
  done
  wait "${jobs[@]}" || true
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  echo "CUDA tests: $(tail -n 1 "$RUNS/cuda_tests.log")"
  for name in spec teacher student; do
    [ -f "$RUNS/$name/best.pth" ] || { echo "$name: no best.pth"; continue; }
    "$PY" benchmarks/fer2013_accuracy.py "$RUNS/$name" --data "$DATA" --workers 8 \
      --json "$RUNS/$name/accuracy.json" 2>&1 | grep -v "^ *$" || echo "$name: accuracy failed"
    "$PY" -m ferkit export "$RUNS/$name/best.pth" --format safetensors --out "$RUNS/$name.safetensors" ||
      echo "$name: export failed"
  done
  # Back through $OUT: at most 8 files of 16 MiB; the weights travel as fp16 safetensors, not as .pth.
  tar -cf - --exclude='*.pth' --exclude='teachers.pt' -C runs gpu | split -b 15M -d - "$OUT/gpu_runs.tar.part"
  ls -l "$OUT"
}

unpack() {
  mkdir -p runs && cat "$1"/gpu_runs.tar.part* | tar -xf - -C runs && echo "unpacked into $RUNS"
}

[ $# -gt 0 ] || { sed -n '2,30p' "$0"; exit 2; }
mkdir -p "$OUT"
case $1 in
  unpack) unpack "$2" ;;
  *) for phase in "$@"; do
       case $phase in
         prepare|stage|run) "$phase" 2>&1 | tee -a "$OUT/run.log" ;;
         *) echo "unknown phase $phase: use prepare, stage, run or unpack DIR"; exit 2 ;;
       esac
     done ;;
esac
