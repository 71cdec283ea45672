#!/bin/sh
# tests/test_device.sh — --device auto|cpu|cuda[:N] on the commands whose model runs on a backend.
# Without a GPU the CUDA path runs through BUILD_DIR/hostcuda/ioupos-* (the same drivers linked
# with the host build of ioupos_cuda.cu: kernels as host loops, cuBLAS by its reference):
#   a. flag errors, and --device cuda refused with the reason when no device answers (exit 1,
#      nothing written); auto falls back to the CPU and says so
#   b. SimSiam on the CUDA backend follows the CPU's losses (tolerance below), its checkpoint and
#      state hold the same tensors, and a run started on one device resumes on the other
#   c. fine-tuning (evaluation only) and ioupos-embed give the CPU's scores and features
# Usage: sh tests/test_device.sh BUILD_DIR   (run by tests/run.sh)
me=test_device prog=ioupos-simsiam
. "$(dirname "$0")/cli_lib.sh"
need ioupos-phantom ioupos-prep ioupos-finetune ioupos-embed npy_compare hostcuda/ioupos-simsiam \
  hostcuda/ioupos-finetune hostcuda/ioupos-embed
host=$bdir/hostcuda
export OMP_NUM_THREADS=1

# ---- data: 2 labelled phantom cases, split 1/1/0, 4 slices each (32 x 38 at 4 mm) -------------
# (small: the host emulation runs every GPU thread as a host loop, a SwinUNETR window in ~2 s)
"$bdir/ioupos-phantom" --output_dir ph --n_cases 2 --seed 0 --size 48x40x4 --spacing 4,4,2.5 \
  --split 1,1,0 >ph.out 2>ph.err &&
  "$bdir/ioupos-prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
    --output_dir d --size_x 4 --size_y 4 --pad_to 32 >prep.out 2>prep.err
check "phantom data prepared ($(tail -n 1 prep.err))" [ $? -eq 0 ]
# SimSiam small enough for the host emulation: C 6, batch 4 (one step per epoch; at batch 2 the
# heads' batch norm over 2 samples makes the loss too ill-conditioned to compare), 16 x 16
# crops, a learning rate that moves the loss within 2 steps (by ~4e-3, 40 tolerances)
ss="--data_dir d/train --embedding_size 6 --batch_size 4 --crop_size 16 --n_epochs 4 --log_every 1
  --base_lr 0.5 --threads 1 --num_workers 0 --chkpt_dir ck"

# ---- a. flags and a device that does not answer --------------------------------------------------
for v in gpu cuda: cuda:x cuda:-1 "cuda 0"; do
  run bad $ss --run_name bad --device "$v"
  check "--device '$v' is a usage error (exit 2, got $rc)" [ "$rc" -eq 2 ]
  check "... naming the flag" grep -q -- "--device: bad value" bad.err
done
check "... and nothing was written" [ ! -e ck/bad ]
# the real build: a GPU answers (a device machine) or --device cuda stops with the reason
run real $ss --run_name real --device cuda --max_steps 1
if [ "$rc" -eq 0 ]; then
  echo "test_device: a CUDA device answers here: $(grep -o 'device cuda.*' real.err | head -n 1)"
else
  check "the real build without a usable GPU: --device cuda exits 1 (got $rc)" [ "$rc" -eq 1 ]
  check "... saying why ($(tail -n 1 real.err))" \
    grep -Eq -- "--device cuda: (no usable CUDA device|this build has no CUDA backend)" real.err
  check "... before anything is written" [ ! -e ck/real ]
  run auto $ss --run_name auto --max_steps 1
  check "--device auto falls back to the CPU (exit $rc)" [ "$rc" -eq 0 ]
  check "... and the log says the CPU ran" grep -q "; device cpu$" auto.err
fi
# the emulation with no device (cudaGetDeviceCount: no device)
IOUPOS_CUDA_HOST_DEVICES=0 run_prog "$host/ioupos-simsiam" nodev $ss --run_name nodev --device cuda
check "no device: --device cuda exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "... naming the reason" grep -q -- "--device cuda: no usable CUDA device: cudaGetDeviceCount: cudaErrorNoDevice" nodev.err
check "... before anything is written" [ ! -e ck/nodev ]
IOUPOS_CUDA_HOST_DEVICES=0 run_prog "$host/ioupos-simsiam" nodev_auto $ss --run_name nodev_auto --max_steps 1
check "no device: --device auto runs on the CPU (exit $rc)" [ "$rc" -eq 0 ]
check "... with a note why" grep -q -- "--device auto: no usable CUDA device.*running on the CPU" nodev_auto.err
check "... and the log says so" grep -q "; device cpu$" nodev_auto.err
run_prog "$host/ioupos-simsiam" range $ss --run_name range --device cuda:1
check "--device cuda:1 with one device exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "... naming the range" grep -q "device 1 out of range (1 device)" range.err

# ---- b. SimSiam: the CUDA backend against the CPU, and resume across devices ----------------------
# losses per step (metrics.jsonl): |cuda - cpu| <= 1e-4 + 1e-3 |cpu|. They differ by ~1e-5 (other
# summation orders in the products, tests/test_cuda_ops.c); the second step's loss moves by ~4e-3
# from the first's, so a wrong update is far outside.
losses() { sed -n 's/.*"loss": *\([-0-9.e+]*\).*/\1/p' "$1"; }
close() { # close FILE_A FILE_B: the same number of losses, each pair within the tolerance
  [ -s "$1" ] && [ "$(wc -l <"$1")" -eq "$(wc -l <"$2")" ] &&
    paste "$1" "$2" | awk '{ d = $1 - $2; if (d < 0) d = -d; a = $2 < 0 ? -$2 : $2;
      if (!(d <= 1e-4 + 1e-3 * a)) bad = 1 } END { exit bad }'
}
run cpu $ss --run_name cpu --device cpu --max_steps 2
check "2 SimSiam steps on the CPU (exit $rc)" [ "$rc" -eq 0 ]
run_prog "$host/ioupos-simsiam" gpu $ss --run_name gpu --device cuda --max_steps 2
check "2 SimSiam steps on the CUDA backend (exit $rc; $(tail -n 1 gpu.err))" [ "$rc" -eq 0 ]
check "... the log names the device" grep -q "; device cuda:0 (host emulation" gpu.err
losses ck/cpu/metrics.jsonl >l_cpu
losses ck/gpu/metrics.jsonl >l_gpu
check "... 2 losses each ($(wc -l <l_cpu), $(wc -l <l_gpu))" [ "$(wc -l <l_cpu)" -eq 2 ]
check "... the CUDA losses follow the CPU's: $(paste -d/ l_gpu l_cpu | tr '\n' ' ')" close l_gpu l_cpu
# tensor names, dtypes and shapes of a safetensors file's header, one per line
tensors() { grep -ao '"[A-Za-z0-9_.]*":{"dtype":"[A-Z0-9]*","shape":\[[0-9,]*\]' "$1"; }
for f in state.safetensors checkpoint.safetensors; do
  tensors "ck/cpu/$f" >t_cpu
  tensors "ck/gpu/$f" >t_gpu
  check "... $f holds the same $(wc -l <t_cpu) tensors on both devices" \
    eval '[ -s t_cpu ] && cmp -s t_cpu t_gpu'
done
# 1 step on the CUDA backend, then 1 on the CPU: the uninterrupted CPU run's losses within the
# tolerance
run_prog "$host/ioupos-simsiam" g2 $ss --run_name g2c --device cuda --max_steps 1
run c2 $ss --run_name g2c --device cpu --max_steps 1 --resume
check "started on the CUDA backend, resumed on the CPU (exit $rc; $(tail -n 1 c2.err))" [ "$rc" -eq 0 ]
check "... the resume says the CPU runs" grep -q "; device cpu$" c2.err
losses ck/g2c/metrics.jsonl >l_g2c
check "... its losses follow the uninterrupted run's: $(paste -d/ l_g2c l_cpu | tr '\n' ' ')" close l_g2c l_cpu
run c3 $ss --run_name c2g --device cpu --max_steps 1
run_prog "$host/ioupos-simsiam" g3 $ss --run_name c2g --device cuda --max_steps 1 --resume
check "started on the CPU, resumed on the CUDA backend (exit $rc; $(tail -n 1 g3.err))" [ "$rc" -eq 0 ]
losses ck/c2g/metrics.jsonl >l_c2g
check "... its losses follow the uninterrupted run's: $(paste -d/ l_c2g l_cpu | tr '\n' ' ')" close l_c2g l_cpu

# ---- c. fine-tuning's evaluation and ioupos-embed on the CUDA backend ------------------------------
ft="--data_dir d --split_path ph/split.json --crop_size 32 --embedding_size 6 --n_epochs 0
  --threads 1 --num_workers 0 --chkpt_dir ck"
run_prog "$bdir/ioupos-finetune" ft_cpu $ft --run_name ft_cpu --device cpu
check "fine-tuning evaluation on the CPU (exit $rc)" [ "$rc" -eq 0 ]
run_prog "$host/ioupos-finetune" ft_gpu $ft --run_name ft_gpu --device cuda
check "fine-tuning evaluation on the CUDA backend (exit $rc; $(tail -n 1 ft_gpu.err))" [ "$rc" -eq 0 ]
check "... the log names the device" grep -q "; device cuda:0 (host emulation" ft_gpu.err
s_cpu=$(sed -n 's/^score [a-z]* [a-z]* //p' ft_cpu.out)
s_gpu=$(sed -n 's/^score [a-z]* [a-z]* //p' ft_gpu.out)
# the untrained model's labels are argmaxes of logits that agree to ~1e-6: the same DSC to 1e-3
check "... the same score ($s_gpu vs $s_cpu)" \
  awk -v a="$s_gpu" -v b="$s_cpu" 'BEGIN { d = a - b; exit !(a != "" && d <= 1e-3 && d >= -1e-3) }'
emb="--chkpt_path ck/cpu/checkpoint.safetensors --data_dir d/val --embedding_size 6 --threads 1"
run_prog "$bdir/ioupos-embed" e_cpu $emb --output e_cpu.npy --device cpu
check "ioupos-embed on the CPU (exit $rc)" [ "$rc" -eq 0 ]
run_prog "$host/ioupos-embed" e_gpu $emb --output e_gpu.npy --device cuda
check "ioupos-embed on the CUDA backend (exit $rc; $(tail -n 1 e_gpu.err))" [ "$rc" -eq 0 ]
check "... saying so" grep -q "device cuda:0 (host emulation" e_gpu.err
check "... the CPU's features: $("$bdir/npy_compare" e_gpu.npy e_cpu.npy 1e-5 1e-4 2>&1)" \
  "$bdir/npy_compare" e_gpu.npy e_cpu.npy 1e-5 1e-4
finish
