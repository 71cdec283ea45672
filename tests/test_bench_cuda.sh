#!/bin/sh
# tests/test_bench_cuda.sh — the programs of `make bench-cuda` (bench_simsiam and bench_finetune
# --device cuda) on the host build of the CUDA backend (BUILD_DIR/hostcuda/bench_*: the same
# sources linked with build/ioupos_cuda_host.o, kernels as host loops), at test sizes, without
# the PyTorch baseline:
#   a. --probe: the emulated device answers (exit 0, its name); with no device, exit 3 and the
#      reason (make bench-cuda's SKIP), as the programs themselves: "SKIP: <reason>", exit 0
#   b. the SimSiam step (C 6, batch 4, 16 x 16 views, heads 64, 1 step) on the CUDA backend:
#      exit 0, a positive pairs/s, a finite loss, the CPU backend's loss (the same program with
#      --device cpu), a device-memory peak above the memory before the first step
#   c. the fine-tuning step (batch 1, 32 x 32 crops, 3 classes) and the inference of a 32 x 32
#      slice: positive crops/s and seconds per case, the CPU's loss and foreground fraction, a
#      device-memory peak
# Usage: sh tests/test_bench_cuda.sh BUILD_DIR   (run by tests/run.sh)
me=test_bench_cuda prog=bench_simsiam
set -- "${1:-build}/hostcuda" # the programs' folder: bin, bdir and need look there
. "$(dirname "$0")/cli_lib.sh"
need bench_finetune
fin=$bdir/bench_finetune
export OMP_NUM_THREADS=1

# (printf's nan / inf are no numbers here: awk would compare them as it likes)
NUM='^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$'
# close A B: both numbers, |A - B| <= 1e-4 + 1e-3 |B|
close() {
  awk -v a="$1" -v b="$2" -v re="$NUM" 'BEGIN { if (a !~ re || b !~ re) exit 1
    d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(d <= 1e-4 + 1e-3 * m) }'
}
# positive X: a number > 0
positive() { awk -v x="$1" -v re="$NUM" 'BEGIN { exit !(x ~ re && x + 0 > 0) }'; }
# finite X: a number
finite() { awk -v x="$1" -v re="$NUM" 'BEGIN { exit !(x ~ re) }'; }

# ---- a. the probe and no device ---------------------------------------------------------------
run probe --probe
check "--probe: the emulated device answers (exit $rc: $(cat probe.out))" [ "$rc" -eq 0 ]
check "... naming it" grep -q "^cuda:0 (host emulation" probe.out
IOUPOS_CUDA_HOST_DEVICES=0 run noprobe --probe
check "--probe without a device: exit 3 (got $rc)" [ "$rc" -eq 3 ]
check "... and the reason ($(cat noprobe.out))" grep -q "^no usable CUDA device" noprobe.out
IOUPOS_CUDA_HOST_DEVICES=0 run nodev --device cuda --no-torch --config c48 --batch 4 --embed 6 \
  --size 16 --heads 64 --steps 1 --warmup 0
check "bench_simsiam --device cuda without a device: exit 0 (got $rc)" [ "$rc" -eq 0 ]
check "... printing SKIP and the reason" grep -q "^bench_simsiam: SKIP: no usable CUDA device" nodev.out
IOUPOS_CUDA_HOST_DEVICES=0 run_prog "$fin" fnodev --device cuda --no-torch --batch 1 --embed 6 \
  --classes 3 --crop 32 --steps 1 --warmup 0
check "bench_finetune --device cuda without a device: exit 0 (got $rc)" [ "$rc" -eq 0 ]
check "... printing SKIP" grep -q "^bench_finetune: SKIP: no usable CUDA device" fnodev.out
run testsize --device cuda --config c48 --embed 6
check "test sizes without --no-torch: a usage error (exit $rc)" [ "$rc" -eq 2 ]

# loss_of FILE PART: the "last loss" of the bench's "PART, threads 1: ours ..." line
loss_of() { sed -n "s/^$2, threads 1: ours.*last loss \([^;]*\);.*/\1/p" "$1"; }

# ---- b. the SimSiam step -------------------------------------------------------------------------
# (batch 4: over 2 samples the heads' batch norm makes the loss too ill-conditioned to compare)
ss="--no-torch --config c48 --batch 4 --embed 6 --size 16 --heads 64 --steps 1 --warmup 0"
run ss_gpu --device cuda $ss
check "bench_simsiam --device cuda (exit $rc; $(grep FAILED ss_gpu.out))" [ "$rc" -eq 0 ]
check "... on the device" grep -q "device cuda (the CUDA backend" ss_gpu.out
run ss_cpu --device cpu $ss --threads 1
check "bench_simsiam --device cpu (exit $rc)" [ "$rc" -eq 0 ]
# "c48, threads 1: ours    0.16 pairs/s (...); last loss 0.009312; 0.13 M parameters"
rate=$(sed -n 's/^c48, threads 1: ours *\([^ ]*\) pairs\/s.*/\1/p' ss_gpu.out)
loss_g=$(loss_of ss_gpu.out c48)
loss_c=$(loss_of ss_cpu.out c48)
check "... pairs/s is a positive number ($rate)" positive "$rate"
check "... the loss is finite ($loss_g)" finite "$loss_g"
check "... the CPU's loss ($loss_g vs $loss_c)" close "$loss_g" "$loss_c"
# "ours    device memory: peak 9 MiB (the backend's allocations; 2 MiB before the first step)"
peak=$(sed -n 's/.*device memory: peak \([0-9]*\) MiB.*/\1/p' ss_gpu.out)
before=$(sed -n "s/.*device memory: peak [0-9]* MiB (the backend's allocations; \([0-9]*\) MiB.*/\1/p" ss_gpu.out)
check "... device memory: peak $peak MiB above $before MiB before the first step" \
  awk -v p="$peak" -v b="$before" 'BEGIN { exit !(p != "" && b != "" && p + 0 > b + 0) }'

# ---- c. fine-tuning step and inference -----------------------------------------------------------
ft="--no-torch --batch 1 --embed 6 --classes 3 --crop 32 --steps 1 --warmup 0 --slices 1 \
  --height 32 --width 32 --sw_batch_size 1"
run_prog "$fin" ft_gpu --device cuda $ft
check "bench_finetune --device cuda (exit $rc; $(grep FAILED ft_gpu.out))" [ "$rc" -eq 0 ]
run_prog "$fin" ft_cpu --device cpu $ft --threads 1
check "bench_finetune --device cpu (exit $rc)" [ "$rc" -eq 0 ]
rate=$(sed -n 's/^train, threads 1: ours *\([^ ]*\) crops\/s.*/\1/p' ft_gpu.out)
loss_g=$(loss_of ft_gpu.out train)
loss_c=$(loss_of ft_cpu.out train)
check "... crops/s is a positive number ($rate)" positive "$rate"
check "... the loss is finite ($loss_g)" finite "$loss_g"
check "... the CPU's loss ($loss_g vs $loss_c)" close "$loss_g" "$loss_c"
secs=$(sed -n 's/^infer, threads 1: ours *\([^ ]*\) s per case.*/\1/p' ft_gpu.out)
fg_g=$(sed -n 's/^infer, threads 1: ours.*foreground \([^;]*\);.*/\1/p' ft_gpu.out)
fg_c=$(sed -n 's/^infer, threads 1: ours.*foreground \([^;]*\);.*/\1/p' ft_cpu.out)
check "... seconds per case is a positive number ($secs)" positive "$secs"
# the labels are argmaxes of logits that agree to ~1e-6: the same foreground fraction to 1e-3
check "... the CPU's foreground fraction ($fg_g vs $fg_c)" \
  awk -v a="$fg_g" -v b="$fg_c" -v re="$NUM" 'BEGIN { d = a - b
    exit !(a ~ re && b ~ re && d <= 1e-3 && d >= -1e-3) }'
n=$(grep -c "device memory: peak [1-9][0-9]* MiB" ft_gpu.out)
check "... a device-memory peak for both parts ($n)" [ "$n" -eq 2 ]
finish
