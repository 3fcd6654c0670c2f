#!/usr/bin/env bash
# Ablations at a fixed budget of ~0.054 PFLOP each (the quick preset's recipe for 4 epochs), one lever at a time.
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
T="python benchmarks/time_to_accuracy.py run"
$T --name quick -- --preset quick --data ../shared/data/fer2013 --out runs/q1_w32_e36
C="--preset quick --epochs 4 --warmup-epochs 0.5 --workers 1 --no-tensorboard"
$T --name abl_base      -- $C --out runs/abl_base
$T --name abl_ema       -- $C --ema-decay 0.999 --out runs/abl_ema
$T --name abl_specstem  -- $C --arch resnet18 --width 16 --out runs/abl_specstem
$T --name abl_w64       -- $C --width 64 --epochs 1 --warmup-epochs 0.125 --out runs/abl_w64
$T --name abl_96px      -- $C --image-size 96 --epochs 1 --warmup-epochs 0.125 --out runs/abl_96px
$T --name abl_specsched -- $C --schedule-unit epoch --warmup-epochs 0 --batch-size 32 --lr 1e-3 --out runs/abl_specsched
