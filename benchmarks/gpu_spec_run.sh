#!/usr/bin/env bash
# The full specification (96x96, 100 epochs) on one GPU, then its FER2013 accuracy (issue 3);
# then the same short run (PARITY_EPOCHS, default 5; 0 skips it) in fp32 and in bf16 with one seed,
# to show what bf16 costs in accuracy.
#
#   bash benchmarks/gpu_spec_run.sh [extra ferkit train flags, applied to every run]
#   bash benchmarks/gpu_spec_run.sh --epochs 1 --limit-per-class 5 --image-size 32   # a CPU dry run
#
# Run from the repository root on the GPU machine, with FER2013 copied into .data/fer2013 (or
# FERKIT_DATA set) and, on the device tool, OUT set to its output folder so the run comes back.
# The clean protocol selects on PublicTest and reports PrivateTest once. The batch and learning
# rate follow the documented rule (lr 1e-3 x sqrt(batch / 32)); the GPU fast path is the default
# there (batched augmentation on the device, bf16, channels_last, fused AdamW).
set -euo pipefail
python -m pip install --quiet --no-deps -e .
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
DATA=${FERKIT_DATA:-.data/fer2013}
RUN=${OUT:-runs}/gpu_spec
start=$(date +%s)
ferkit train --data "$DATA" --protocol clean --batch-size 512 --workers 8 --out "$RUN" --overwrite "$@"
echo "wall seconds: $(( $(date +%s) - start ))"
python benchmarks/fer2013_accuracy.py "$RUN" --data "$DATA" --workers 8 --json "$RUN/benchmark_accuracy.json"
for precision in fp32 bf16; do
  [ "${PARITY_EPOCHS:-5}" -gt 0 ] || break
  ferkit train --data "$DATA" --protocol clean --batch-size 512 --workers 8 --out "${RUN}_parity_$precision" \
    --overwrite --epochs "${PARITY_EPOCHS:-5}" --seed 0 --precision "$precision" "$@"
  python benchmarks/fer2013_accuracy.py "${RUN}_parity_$precision" --data "$DATA" --workers 8 \
    --json "${RUN}_parity_$precision/benchmark_accuracy.json"
done
