#!/bin/sh
# tests/test_parallel.sh — data-parallel training under mpirun (issue 14): the training commands
# on 2 and 3 processes against the one-process run of the same seed and global batch.
#   a. SimSiam on 2 and 3 processes (and on volumes), DINO (local crops) on 2: the weights after 2 epochs equal
#      the one-process run's within 1e-4 of each tensor's scale (st_compare; the forward, the
#      SyncBN statistics and DINO's centre are the one-process bits, the gradient sums differ by
#      float rounding in their order), the first step's loss and monitors to the printed digit,
#      every later loss within 1e-4; only rank 0 writes (the same files as one process, one
#      console line per step).
#   b. Resume across process counts: 2 processes stopped after 3 steps, resumed by 1 process,
#      and the other way round, end as the uninterrupted one-process run (1e-4); SIGTERM to one
#      rank stops every rank at the same step with the state saved.
#   c. Fine-tuning on 2 processes: weights (1e-4) and losses, and stopped on 2 and resumed on 1;
#      the evaluation alone (n_epochs 0)
#      split by case over 2 and 3 processes gives the one-process results.json and table byte
#      for byte, on slices and on volumes (MONAI's weights, tests/fixtures/eval3d); with
#      --predict_dir rank 0 writes the same prediction files.
#   d. Bad setups, each a non-zero exit with a message and no run directory left: a global batch
#      that the processes do not divide, ranks with different flags, ranks whose data folders
#      hold different files, --device cuda:N for several processes, --device cuda with fewer GPUs
#      than processes on the machine (the host build of the CUDA backend, 1 emulated GPU; with
#      --device auto the CPU and a note), a build without MPI under mpirun, and a rank killed
#      mid-run (mpirun ends the job within 60 s).
#   e. --device cuda on 2 emulated GPUs (the host build, gradients over its NCCL): the CPU
#      one-process run's weights within 1e-4 after 2 SimSiam steps and a DINO step.
# The tolerances: with the settings here (batch 8, lr 1e-3 SGD; 2e-5 AdamW) the two runs agree
# to about 1e-5 of each tensor's scale; a run whose gradients are not summed over the ranks
# misses by 3e3 tolerances (checked by hand, breaking the sum). Larger learning rates at these
# toy sizes amplify float rounding chaotically (a 3e-5 difference becomes 3e-3 in one AdamW
# step at the end of the warm-up), the same for any two correct implementations.
# Usage: sh tests/test_parallel.sh BUILD_DIR   (run by tests/run.sh)
# Without mpirun or an MPI build it prints "SKIP: <reason>" and succeeds, unless
# IOUPOS_REQUIRE_MPI=1 (CI), which makes that a failure (tests/mpi_lib.sh). About 40 s on 2
# cores.

build=${1:-build}
root=$(pwd)
me=test_parallel
prog=hostcuda/ioupos-simsiam-mpi # built only with MPI: mpi_lib.sh skips without it
. "$(dirname "$0")/mpi_lib.sh"
prog=ioupos-simsiam
. "$(dirname "$0")/cli_lib.sh"
need ioupos-dino ioupos-finetune ioupos-phantom ioupos-prep st_compare hostcuda/ioupos-simsiam-mpi \
  hostcuda/ioupos-dino-mpi hostcuda/ioupos-simsiam
simsiam=$bin
dino=$bdir/ioupos-dino
ft=$bdir/ioupos-finetune
hostmpi=$bdir/hostcuda/ioupos-simsiam-mpi

# mpi NAME NP PROGRAM ARGS...: mpirun -np NP (at most 120 s), stdout NAME.out, stderr NAME.err,
# status in $rc
mpi() {
  name=$1; np=$2; shift 2
  timeout 120 mpirun --oversubscribe ${IOUPOS_MPIRUN_FLAGS:-} -np "$np" "$@" >"$name.out" 2>"$name.err"
  rc=$?
}
same() { # same NAME GOT EXPECTED: st_compare within 1e-4
  out=$("$bdir/st_compare" "$2" "$3" 1e-4 2>&1)
  check "$1: $out" [ $? -eq 0 ]
  echo "$me: $1: $out"
}
no_timing() { sed 's/, "images_per_s": [^,}]*//; s/, "slices_per_s": [^,}]*//; s/, "seconds": [^,}]*//' "$1"; }
# losses_close A B: the same metrics lines, each "loss" within 1e-4 relative + 1e-7
losses_close() {
  [ "$(wc -l <"$1")" -eq "$(wc -l <"$2")" ] &&
    paste -d'\n' "$1" "$2" | sed -n 's/.*"loss": \([^,]*\),.*/\1/p' |
    awk 'NR % 2 == 1 { a = $1 } NR % 2 == 0 { d = a - $1; if (d < 0) d = -d;
         m = $1 < 0 ? -$1 : $1; if (d > 1e-4 * m + 1e-7) bad = 1; n++ }
         END { exit !(n > 0 && !bad) }'
}

# ---- data: 2 phantom volumes -> 32 PNG slices; 4 labelled cases -> splits of 8-slice cases ----
"$bdir/ioupos-phantom" --output_dir ph --n_cases 2 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
  --no_labels >ph.out 2>ph.err &&
  "$bdir/ioupos-prep" --data_dir ph/images --output_dir data >prep.out 2>prep.err &&
  "$bdir/ioupos-phantom" --output_dir pl --n_cases 4 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
    --split 2,1,1 >pl.out 2>pl.err &&
  "$bdir/ioupos-prep" --data_dir pl/images --labels_dir pl/labels --split_path pl/split.json \
    --output_dir s --size_x 8 --size_y 8 --size_z 5 --pad_to 32 >preps.out 2>preps.err
check "phantom data prepared ($(cat ph.err prep.err pl.err preps.err | tail -n 2))" [ $? -eq 0 ]

# ---- a. SimSiam and DINO: N processes = one ----------------------------------------------------
pt="--data_dir data --low_resource_mode --embedding_size 6 --crop_size 32 --n_epochs 2
  --num_workers 0 --threads 1 --log_every 1 --run_name r"
run_prog "$simsiam" ss1 $pt --batch_size 8 --base_lr 0.001 --chkpt_dir one
check "simsiam, one process (exit $rc; $(tail -n 1 ss1.err))" [ "$rc" -eq 0 ]
mpi ss2 2 "$simsiam" $pt --batch_size 8 --base_lr 0.001 --chkpt_dir two
check "simsiam, mpirun -np 2 (exit $rc; $(tail -n 1 ss2.err))" [ "$rc" -eq 0 ]
check "... says it runs data parallel" grep -q "^data parallel: 2 processes (mpi), 4 of each batch's 8 on each" ss2.err
same "simsiam 2 processes: checkpoint" two/r/checkpoint.safetensors one/r/checkpoint.safetensors
same "simsiam 2 processes: state" two/r/state.safetensors one/r/state.safetensors
no_timing one/r/metrics.jsonl >m1
no_timing two/r/metrics.jsonl >m2
check "... the first step's line (loss, p_std, z_std) is the one-process line" \
  [ "$(head -n 1 m1)" = "$(head -n 1 m2)" ]
check "... every later loss within 1e-4" losses_close m1 m2
check "... rank 0 alone writes: the same files as one process" \
  [ "$(ls one/r | tr '\n' ' ')" = "$(ls two/r | tr '\n' ' ')" ]
check "... one console line per step (8), not one per rank" \
  [ "$(grep -c '^epoch [0-9]* step' ss2.err)" -eq 8 ]
# 3 processes (batch 12: 2 steps an epoch): sums of 3 in rank order
run_prog "$simsiam" ss1b $pt --batch_size 12 --base_lr 0.001 --chkpt_dir one3
mpi ss3 3 "$simsiam" $pt --batch_size 12 --base_lr 0.001 --chkpt_dir three
check "simsiam, mpirun -np 3 (exit $rc / $(tail -n 1 ss3.err))" [ "$rc" -eq 0 ]
same "simsiam 3 processes: checkpoint" three/r/checkpoint.safetensors one3/r/checkpoint.safetensors
# DINO with 2 local crops (drop-path drawn for the global batch, the centre from it)
dn="$pt --batch_size 8 --n_local_crops 2 --local_crop_size 16 --warmup_epochs 1"
run_prog "$dino" dn1 $dn --chkpt_dir done
check "dino, one process (exit $rc; $(tail -n 1 dn1.err))" [ "$rc" -eq 0 ]
mpi dn2 2 "$dino" $dn --chkpt_dir dtwo
check "dino, mpirun -np 2 (exit $rc; $(tail -n 1 dn2.err))" [ "$rc" -eq 0 ]
same "dino 2 processes: checkpoint (teacher and student)" dtwo/r/checkpoint.safetensors done/r/checkpoint.safetensors
same "dino 2 processes: state (AdamW, centre)" dtwo/r/state.safetensors done/r/state.safetensors
no_timing done/r/metrics.jsonl >d1
no_timing dtwo/r/metrics.jsonl >d2
check "... every loss within 1e-4" losses_close d1 d2

# 3D SimSiam (volumes; the loader's shards and the drop-path rows the same as in 2D): 8 volumes
"$bdir/ioupos-phantom" --output_dir p3 --n_cases 8 --seed 0 --size 40x32x16 --spacing 8,8,5 \
  --no_labels >p3.out 2>p3.err &&
  "$bdir/ioupos-prep" --data_dir p3/images --output_dir vol --spatial_dims 3 --size_x 8 \
    --size_y 8 --size_z 5 --pad_to 24 >prep3.out 2>prep3.err
check "phantom volumes prepared ($(tail -n 1 prep3.err))" [ $? -eq 0 ]
# (batch 8, one step an epoch: at batch 4 a difference of 3e-6 after the first step grew to 2e-4
# after the second, the heads' batch norm over 4 rows amplifying rounding; test_cuda_ops found
# one process as sensitive to a 1-ulp change of its input at that batch)
v3="--data_dir vol --spatial_dims 3 --low_resource_mode --embedding_size 12 --batch_size 8
  --crop_size 16,16,8 --n_epochs 3 --num_workers 0 --threads 1 --base_lr 0.001 --run_name r"
run_prog "$simsiam" s31 $v3 --chkpt_dir s3one
mpi s32 2 "$simsiam" $v3 --chkpt_dir s3two
check "3D simsiam, one process and 2 (exit $rc; $(tail -n 1 s32.err))" [ "$rc" -eq 0 ]
same "3D simsiam 2 processes: checkpoint" s3two/r/checkpoint.safetensors s3one/r/checkpoint.safetensors

# ---- b. resume with another number of processes; a stop signal -------------------------------
mpi rs1 2 "$simsiam" $pt --batch_size 8 --base_lr 0.001 --chkpt_dir r21 --max_steps 3
check "2 processes stopped after 3 steps (exit $rc)" [ "$rc" -eq 0 ] && [ -f r21/r/state.safetensors ]
run_prog "$simsiam" rs2 $pt --batch_size 8 --base_lr 0.001 --chkpt_dir r21 --resume
check "... resumed by one process (exit $rc; $(tail -n 1 rs2.err))" [ "$rc" -eq 0 ]
same "2 then 1 processes: checkpoint" r21/r/checkpoint.safetensors one/r/checkpoint.safetensors
run_prog "$simsiam" rs3 $pt --batch_size 8 --base_lr 0.001 --chkpt_dir r12 --max_steps 5
mpi rs4 2 "$simsiam" $pt --batch_size 8 --base_lr 0.001 --chkpt_dir r12 --resume
check "1 process stopped after 5 steps, resumed by 2 (exit $rc; $(tail -n 1 rs4.err))" [ "$rc" -eq 0 ]
check "... the resume says where" grep -q "resuming r12/r at epoch 2 step 1/4" rs4.err
same "1 then 2 processes: checkpoint" r12/r/checkpoint.safetensors one/r/checkpoint.safetensors
# SIGTERM to one rank (a scheduler's time limit reaches the ranks at different moments): the
# ranks agree on the step to stop after, rank 0 saves the state, every rank exits 143. (Ctrl-C
# to mpirun itself is mpirun's: it kills the ranks after a short delay, maybe before the save.)
long=$(echo "$pt" | sed 's/--n_epochs 2/--n_epochs 200/')
timeout 120 mpirun --oversubscribe ${IOUPOS_MPIRUN_FLAGS:-} -np 2 sh -c \
  'echo $$ >"pid.$OMPI_COMM_WORLD_RANK"; exec "$0" "$@"' "$simsiam" $long --batch_size 8 \
  --base_lr 0.001 --chkpt_dir sig >sig.out 2>sig.err &
mpid=$!
k=0
while [ $k -lt 300 ] && ! grep -q '"step": 3,' sig/r/metrics.jsonl 2>/dev/null; do
  sleep 0.1
  k=$((k + 1))
done
kill -TERM "$(cat pid.1)"
wait $mpid
rc=$?
check "SIGTERM to one rank: the job ends with status 143 (got $rc)" [ "$rc" -eq 143 ]
check "... both ranks stopped at one step, the state saved" \
  grep -q "interrupted after .* the state is saved" sig.err
mpi sig2 2 "$simsiam" $long --batch_size 8 --base_lr 0.001 --chkpt_dir sig --resume --max_steps 1
check "... and --resume continues it (exit $rc; $(tail -n 1 sig2.err))" [ "$rc" -eq 0 ]

# ---- c. fine-tuning; the evaluation split by case -------------------------------------------
fo="--data_dir s --split_path pl/split.json --crop_size 32 --batch_size 4 --threads 1
  --embedding_size 12 --n_epochs 2 --warmup_epochs 0 --base_lr 2e-5 --log_every 1
  --num_workers 0 --run_name r"
run_prog "$ft" ft1 $fo --chkpt_dir fone
check "fine-tuning, one process (exit $rc; $(tail -n 1 ft1.err))" [ "$rc" -eq 0 ]
mpi ft2 2 "$ft" $fo --chkpt_dir ftwo
check "fine-tuning, mpirun -np 2 (exit $rc; $(tail -n 1 ft2.err))" [ "$rc" -eq 0 ]
check "... evaluations split by case" grep -q "evaluations split by case" ft2.err
same "fine-tuning 2 processes: checkpoint" ftwo/r/checkpoint.safetensors fone/r/checkpoint.safetensors
same "fine-tuning 2 processes: state" ftwo/r/state.safetensors fone/r/state.safetensors
no_timing fone/r/metrics.jsonl | grep '"loss"' >f1
no_timing ftwo/r/metrics.jsonl | grep '"loss"' >f2
check "... every loss within 1e-4" losses_close f1 f2
check "... one table, printed by rank 0" [ "$(grep -c '^score ' ft2.out)" -eq 1 ]
mpi fr1 2 "$ft" $fo --chkpt_dir fr --max_steps 3
run_prog "$ft" fr2 $fo --chkpt_dir fr --resume
check "fine-tuning: 2 processes stopped after 3 steps, resumed by one (exit $rc; $(tail -n 1 fr2.err))" \
  [ "$rc" -eq 0 ]
same "fine-tuning 2 then 1 processes: checkpoint" fr/r/checkpoint.safetensors fone/r/checkpoint.safetensors
check "... the same best.safetensors" "$bdir/st_compare" fr/r/best.safetensors fone/r/best.safetensors 1e-4
ev="--data_dir s --split_path pl/split.json --crop_size 32 --threads 1 --embedding_size 12
  --n_epochs 0 --num_workers 0 --chkpt_path fone/r/checkpoint.safetensors --run_name r"
run_prog "$ft" ev1 $ev --chkpt_dir eone --predict_dir pone
check "evaluation, one process (exit $rc; $(tail -n 1 ev1.err))" [ "$rc" -eq 0 ]
for np in 2 3; do
  mpi "ev$np" "$np" "$ft" $ev --chkpt_dir "e$np"
  check "evaluation on $np processes (exit $rc; $(tail -n 1 ev$np.err))" [ "$rc" -eq 0 ]
  check "... results.json byte for byte" cmp -s "e$np/r/results.json" eone/r/results.json
  check "... the printed table byte for byte" cmp -s "ev$np.out" ev1.out
done
mpi evp 2 "$ft" $ev --chkpt_dir ep --predict_dir ptwo
check "evaluation with --predict_dir on 2 processes (exit $rc)" [ "$rc" -eq 0 ]
check "... the same prediction files" [ "$(cd pone && find . -type f | sort | xargs cksum)" = \
  "$(cd ptwo && find . -type f | sort | xargs cksum)" ]

# 3D (volumes: each rank's view holds its cases' files): MONAI's weights on 2 validation volumes
fix=$root/tests/fixtures/eval3d
mkdir -p v3/val/labels
gzip -dc "$fix/weights.safetensors.gz" >w3.safetensors
for c in case_a case_b; do
  cp "$fix/val/$c.nii.gz" v3/val/ && cp "$fix/val/labels/$c.nii.gz" v3/val/labels/
done
printf '{"train": [], "val": ["case_a", "case_b"]}' >v3/split.json
e3="--data_dir v3 --split_path v3/split.json --spatial_dims 3 --n_epochs 0 --chkpt_path w3.safetensors
  --embedding_size 3 --n_classes 3 --crop_size 32,32,64 --sw_batch_size 3 --threads 1 --run_name r"
run_prog "$ft" v31 $e3 --chkpt_dir v3one --predict_dir v3p1
check "3D evaluation, one process (exit $rc; $(tail -n 1 v31.err))" [ "$rc" -eq 0 ]
mpi v32 2 "$ft" $e3 --chkpt_dir v3two
check "3D evaluation on 2 processes, a volume each (exit $rc; $(tail -n 1 v32.err))" [ "$rc" -eq 0 ]
check "... results.json byte for byte" cmp -s v3two/r/results.json v3one/r/results.json
mpi v33 2 "$ft" $e3 --chkpt_dir v3p --predict_dir v3p2
check "... with --predict_dir: the same volumes" [ "$(cd v3p1 && find . -type f | sort | xargs cksum)" = \
  "$(cd v3p2 && find . -type f | sort | xargs cksum)" ]

# ---- d. bad setups ----------------------------------------------------------------------------
mpi b1 3 "$simsiam" $pt --batch_size 8 --chkpt_dir bad
check "batch 8 on 3 processes: refused (exit $rc)" [ "$rc" -ne 0 ]
check "... naming the flag" grep -q -- "--batch_size 8 is the global batch: it must be a multiple of the 3 processes" b1.err
check "... nothing written" [ ! -e bad ]
mpi b2 1 "$simsiam" $pt --batch_size 8 --chkpt_dir bad : -np 1 "$simsiam" $pt --batch_size 8 \
  --chkpt_dir bad --seed 5
check "ranks with different flags: refused (exit $rc)" [ "$rc" -ne 0 ]
check "... naming the rank" grep -q "rank 1 of 2: its flags differ from rank 0's" b2.err
check "... nothing left" [ ! -e bad ]
mkdir -p w0 w1/data
ln -s ../data w0/data
for f in $(ls data | head -n 24); do cp "data/$f" w1/data/; done
timeout 120 mpirun --oversubscribe ${IOUPOS_MPIRUN_FLAGS:-} -np 1 -wdir "$tmp/w0" "$simsiam" $pt \
  --batch_size 8 --chkpt_dir bad : -np 1 -wdir "$tmp/w1" "$simsiam" $pt --batch_size 8 \
  --chkpt_dir bad >b3.out 2>b3.err
rc=$?
check "ranks whose data folders differ: refused (exit $rc)" [ "$rc" -ne 0 ]
check "... naming the rank and the folder" grep -q "rank 1 of 2: its data folder data holds other files than rank 0's (24 files here" b3.err
check "... nothing left" [ ! -e w0/bad ] && [ ! -e w1/bad ]
mpi b4 2 "$hostmpi" $pt --batch_size 8 --chkpt_dir bad --device cuda:0
check "--device cuda:0 on 2 processes: refused (exit $rc)" [ "$rc" -ne 0 ]
check "... saying why" grep -q -- "--device cuda:0: 2 processes would share one GPU" b4.err
IOUPOS_CUDA_HOST_DEVICES=1 mpi b5 2 -x IOUPOS_CUDA_HOST_DEVICES "$hostmpi" $pt --batch_size 8 \
  --chkpt_dir bad --device cuda
check "--device cuda, 2 processes and 1 GPU: refused (exit $rc)" [ "$rc" -ne 0 ]
check "... naming both counts" grep -q -- "--device cuda: 2 processes on this machine but 1 usable GPU (one process per GPU)" b5.err
check "... nothing written" [ ! -e bad ]
IOUPOS_CUDA_HOST_DEVICES=1 mpi b5a 2 -x IOUPOS_CUDA_HOST_DEVICES "$hostmpi" $pt --batch_size 8 \
  --chkpt_dir auto --max_steps 1
check "--device auto, 2 processes and 1 GPU: the CPU (exit $rc)" [ "$rc" -eq 0 ]
check "... with a note saying why, once" [ "$(grep -c -- "--device auto: 2 processes on this machine but 1 usable GPU.*running on the CPU" b5a.err)" -eq 1 ]
mpi b7 2 "$bdir/hostcuda/ioupos-simsiam" $pt --batch_size 8 --chkpt_dir bad
check "a build without MPI as 2 processes: refused (exit $rc)" [ "$rc" -ne 0 ]
check "... saying so" grep -q "launched as 2 processes (mpirun), but this build has no MPI" b7.err
check "... nothing written" [ ! -e bad ]
# a rank killed mid-run (kill -9 of rank 1 after 1 s): mpirun ends the job, no rank hangs
t0=$(date +%s)
timeout 60 mpirun --oversubscribe ${IOUPOS_MPIRUN_FLAGS:-} -np 2 sh -c \
  'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then (sleep 1; kill -9 $$) & fi; exec "$0" "$@"' \
  "$simsiam" $long --batch_size 8 --chkpt_dir died >b6.out 2>b6.err
rc=$?
check "a rank killed: the job ends with an error (exit $rc), not a hang" \
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ]
check "... mpirun says which ($(grep -m 1 -i 'signal\|exited' b6.err))" grep -qi "signal 9\|killed" b6.err
echo "$me: a killed rank ended the job in $(( $(date +%s) - t0 )) s"

# ---- e. --device cuda on 2 emulated GPUs, gradients over NCCL ---------------------------------
run_prog "$simsiam" hc1 $pt --batch_size 8 --base_lr 0.001 --chkpt_dir hone --max_steps 2
IOUPOS_CUDA_HOST_DEVICES=2 mpi hc2 2 -x IOUPOS_CUDA_HOST_DEVICES "$hostmpi" $pt --batch_size 8 \
  --base_lr 0.001 --chkpt_dir htwo --max_steps 2 --device cuda
check "2 processes on 2 emulated GPUs (exit $rc; $(tail -n 1 hc2.err))" [ "$rc" -eq 0 ]
check "... gradients over NCCL" grep -q "data parallel: 2 processes (mpi, gradients on nccl)" hc2.err
check "... device cuda" grep -q "; device cuda" hc2.err
same "2 emulated GPUs vs the CPU alone: state after 2 steps" htwo/r/state.safetensors hone/r/state.safetensors
# DINO: its loss and centre's gathers and sums on device memory
run_prog "$dino" hd1 $dn --chkpt_dir hdone --max_steps 1
IOUPOS_CUDA_HOST_DEVICES=2 mpi hd2 2 -x IOUPOS_CUDA_HOST_DEVICES "$bdir/hostcuda/ioupos-dino-mpi" $dn \
  --chkpt_dir hdtwo --max_steps 1 --device cuda
check "DINO, 2 processes on 2 emulated GPUs (exit $rc; $(tail -n 1 hd2.err))" [ "$rc" -eq 0 ]
same "DINO on 2 emulated GPUs vs the CPU alone: state after a step" hdtwo/r/state.safetensors hdone/r/state.safetensors
check "... the same logged loss" [ "$(no_timing hdone/r/metrics.jsonl | head -n 1)" = "$(no_timing hdtwo/r/metrics.jsonl | head -n 1)" ]

finish
