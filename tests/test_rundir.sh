#!/bin/sh
# tests/test_rundir.sh — what a user can rely on about run directories and output folders
# (README "Runs, re-runs and failures"): one process at a time holds a run directory or an
# ioupos-prep output folder, and kill -9 frees it (a); stale temporary files of a killed run are
# removed by the next run or resume (b); a run that fails before its first saved state leaves
# nothing, one that fails later stays resumable (c); a failed prep case leaves none of its files
# (d); epochs are counted from 1 in logs, metrics and checkpoint names (e).
# Usage: sh tests/test_rundir.sh BUILD_DIR   (run by tests/run.sh). About 20 s on 2 cores.
# A full disk is simulated with the file-size limit (ulimit -f, SIGXFSZ ignored: writes past it
# fail with EFBIG), which needs neither root nor a small file system.

me=test_rundir prog=ioupos-simsiam
. "$(dirname "$0")/cli_lib.sh"

simsiam=$bin
need ioupos-dino ioupos-phantom ioupos-prep ioupos-finetune
dino=$bdir/ioupos-dino
ft=$bdir/ioupos-finetune
prep=$bdir/ioupos-prep

# ---- data: 2 labelled phantom cases (train 1, val 1), 16 slices each of 61 x 86 ---------------
"$bdir/ioupos-phantom" --output_dir ph --n_cases 2 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
  --split 1,1,0 >ph.out 2>ph.err &&
  "$prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json --output_dir d \
    --size_x 4 --size_y 4 --pad_to 32 >prep.out 2>prep.err
check "phantom data prepared ($(tail -n 1 prep.err))" [ $? -eq 0 ]

# 16 slices, batch 4: 4 optimiser steps per epoch
tiny="--data_dir d/train --chkpt_dir ck --low_resource_mode --embedding_size 6 --batch_size 4
  --crop_size 32 --num_workers 0 --threads 1"
ftiny="--data_dir d --split_path ph/split.json --crop_size 32 --batch_size 4 --threads 1
  --chkpt_dir ck --embedding_size 6 --warmup_epochs 0"
# wait_for FILE: up to 30 s until FILE exists
wait_for() {
  i=0
  while [ $i -lt 3000 ] && [ ! -e "$1" ]; do sleep 0.01; i=$((i + 1)); done
  [ -e "$1" ]
}
# limited BLOCKS NAME CMD...: CMD with files limited to BLOCKS x 512 bytes (dash's unit), as if
# the disk were full past that; stdout/stderr in NAME.out/.err, status in $rc
limited() {
  blocks=$1 name=$2
  shift 2
  (trap '' XFSZ; ulimit -f "$blocks" && exec "$@") >"$name.out" 2>"$name.err"
  rc=$?
}
# no_tmp DIR: no "*.tmp.<pid>" file below DIR
no_tmp() { [ -z "$(find "$1" -name '*.tmp.[0-9]*' 2>/dev/null)" ]; }

# ---- a. one holder per folder; kill -9 frees it --------------------------------------------------
"$simsiam" $tiny --run_name r --n_epochs 200 >a_first.out 2>a_first.err &
pid=$!
check "a: the first run creates its run directory" wait_for ck/r/flags.json
kill -STOP "$pid" 2>/dev/null
sum=$(cksum ck/r/flags.json)
run a_second $tiny --run_name r --n_epochs 200
check "a: a second run of the directory exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "a: ... naming the holder ($(cat a_second.err))" grep -q "ck/r is in use by process $pid" a_second.err
run a_resume $tiny --run_name r --n_epochs 200 --resume
check "a: --resume of a running run exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "a: ... naming the holder" grep -q "ck/r is in use by process $pid" a_resume.err
use "$dino"
run a_dino $tiny --run_name r --n_epochs 200
check "a: a DINO run there is refused too (got $rc)" \
  sh -c "[ $rc -eq 1 ] && grep -q 'in use by process $pid' a_dino.err"
use "$ft"
run a_ft $ftiny --run_name r --n_epochs 1
check "a: a fine-tuning run there is refused too (got $rc)" \
  sh -c "[ $rc -eq 1 ] && grep -q 'in use by process $pid' a_ft.err"
use "$prep"
run a_prep --data_dir ph/images --output_dir ck/r
check "a: ioupos-prep into the held folder is refused (got $rc)" \
  sh -c "[ $rc -eq 1 ] && grep -q -- '--output_dir ck/r is in use by process $pid' a_prep.err"
check "a: the refused runs left the holder's files alone" [ "$(cksum ck/r/flags.json)" = "$sum" ]
check "a: ... and wrote no PNG there" [ -z "$(ls ck/r | grep '\.png$')" ]
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
use "$simsiam"
if [ -e ck/r/state.safetensors ]; then again=--resume; else again=; fi
run a_after $tiny --run_name r --n_epochs 200 --max_steps 2 $again
check "a: after kill -9 the directory is free again (got $rc; $(tail -n 1 a_after.err))" [ "$rc" -eq 0 ]
check "a: ... and a finished run leaves no lock file" [ ! -e ck/r/.lock ]

# ---- b. stale temporary files go ---------------------------------------------------------------
rm -rf ck
mkdir -p ck/s
dead=$(sh -c 'echo $$') # a process that has ended
printf x >"ck/s/state.safetensors.tmp.$dead"
printf x >"ck/s/metrics.jsonl.tmp.$$" # this shell: alive, not stale
printf x >ck/s/notes.tmp.txt           # not a temporary file of ours
run b_new $tiny --run_name s --n_epochs 2 --max_steps 2
check "b: a run in a folder with stale files exits 0 (got $rc; $(tail -n 1 b_new.err))" [ "$rc" -eq 0 ]
check "b: ... removes the dead writer's temporary file" [ ! -e "ck/s/state.safetensors.tmp.$dead" ]
check "b: ... says so" grep -q "removed 1 stale temporary file of a killed earlier process" b_new.err
check "b: ... keeps a live process's temporary file" [ -e "ck/s/metrics.jsonl.tmp.$$" ]
check "b: ... and other files" [ -e ck/s/notes.tmp.txt ]
printf x >"ck/s/checkpoint.safetensors.tmp.$dead"
run b_resume $tiny --run_name s --n_epochs 2 --resume
check "b: --resume exits 0 (got $rc; $(tail -n 1 b_resume.err))" [ "$rc" -eq 0 ]
check "b: --resume removes stale temporary files too" [ ! -e "ck/s/checkpoint.safetensors.tmp.$dead" ]
rm -f "ck/s/metrics.jsonl.tmp.$$"
# a real kill -9 in the middle of a run, then --resume: no temporary file is left either way
"$simsiam" $tiny --run_name k --n_epochs 30 >b_kill.out 2>b_kill.err &
pid=$!
wait_for ck/k/checkpoint_epoch2.safetensors
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
run b_kill_resume $tiny --run_name k --n_epochs 30 --resume --max_steps 1
check "b: --resume after kill -9 exits 0 (got $rc; $(tail -n 1 b_kill_resume.err))" [ "$rc" -eq 0 ]
check "b: ... and no temporary file is left" no_tmp ck

# ---- c. failed runs: nothing left before the first state, resumable after ---------------------
rm -rf ck
limited 16 c_full "$simsiam" $tiny --run_name f --n_epochs 2
check "c: a run that hits a full disk exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "c: ... saying what failed ($(tail -n 1 c_full.err))" grep -q "write failed" c_full.err
check "c: ... and leaves nothing (no ck/)" [ ! -e ck ]
mkdir -p ck/keep
limited 16 c_full2 "$simsiam" $tiny --run_name keep --n_epochs 2
check "c: in an existing folder it removes only its own files" \
  sh -c "[ $rc -eq 1 ] && [ -d ck/keep ] && [ -z \"\$(ls -A ck/keep)\" ]"
use "$ft"
limited 16 c_ft "$ft" $ftiny --run_name f --n_epochs 1
check "c: a fine-tuning run that hits a full disk exits 1 (got $rc; $(tail -n 1 c_ft.err))" [ "$rc" -eq 1 ]
check "c: ... and leaves nothing" [ ! -e ck/f ]
use "$simsiam"
run c_part $tiny --run_name g --n_epochs 2 --max_steps 5
check "c: a partial run saves its state (got $rc)" [ -e ck/g/state.safetensors ]
limited 16 c_late "$simsiam" $tiny --run_name g --n_epochs 2 --resume
check "c: a resumed run that hits a full disk exits 1 (got $rc)" [ "$rc" -eq 1 ]
for f in flags.json metrics.jsonl state.safetensors checkpoint_epoch1.safetensors; do
  check "c: ... keeps $f" [ -s "ck/g/$f" ]
done
check "c: ... and no temporary file" no_tmp ck
run c_resume $tiny --run_name g --n_epochs 2 --resume
check "c: ... and --resume then finishes it (got $rc; $(tail -n 1 c_resume.err))" [ "$rc" -eq 0 ]
run c_ref $tiny --run_name ref --n_epochs 2 --log_every 1
check "c: ... with the weights of an uninterrupted run" \
  cmp -s ck/g/checkpoint.safetensors ck/ref/checkpoint.safetensors

# ---- d. a failed prep case leaves none of its files --------------------------------------------
# p/train/labels is a file, not a folder: the train case fails after its image slices were
# written (the label slices cannot be); the val case is fine.
mkdir -p p/train
printf x >p/train/labels
use "$prep"
run d_prep --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json --output_dir p \
  --size_x 4 --size_y 4 --pad_to 32
check "d: prep with a failing case exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "d: ... naming it ($(cat d_prep.out))" grep -q "^FAILED phantom_000: .*p/train/labels" d_prep.out
check "d: ... leaving none of its slices" [ -z "$(find p/train -name '*.png')" ]
check "d: ... and no marker for it" [ ! -e p/train/.done/phantom_000 ]
check "d: the other case is complete" [ "$(find p/val -name '*.png' | wc -l)" -eq 32 ]
check "d: no temporary file is left" no_tmp p
rm p/train/labels
run d_again --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
  --output_dir p --size_x 4 --size_y 4 --pad_to 32
check "d: a re-run then processes it (got $rc)" \
  [ "$rc" -eq 0 -a "$(find p -name '*.png' | wc -l)" -eq "$(find d -name '*.png' | wc -l)" ]
check "d: ... and leaves no lock file" [ ! -e p/.lock ]

# ---- e. epochs are counted from 1 everywhere ----------------------------------------------------
use "$simsiam"
check "e: the log's 'epoch 1 done' goes with checkpoint_epoch1" \
  sh -c "grep -q '^epoch 1 done' c_ref.err && grep -q '^epoch 2 done' c_ref.err &&
    [ -e ck/ref/checkpoint_epoch1.safetensors ] && [ -e ck/ref/checkpoint_epoch2.safetensors ]"
check "e: no epoch 0 in the log, no checkpoint_epoch0" \
  sh -c "! grep -q 'epoch 0' c_ref.err && [ ! -e ck/ref/checkpoint_epoch0.safetensors ]"
check "e: metrics.jsonl's epochs are 1 and 2" \
  [ "$(sed 's/^{"epoch": \([0-9]*\),.*/\1/' ck/ref/metrics.jsonl | sort -u | tr '\n' ' ')" = "1 2 " ]
check "e: the first step is 'epoch 1 step 1/4'" grep -q '^epoch 1 step 1/4 ' c_ref.err
check "e: a resume names the epoch it continues" grep -q "^resuming ck/g at epoch 2 step 1/4" c_resume.err
use "$ft"
run e_ft $ftiny --run_name e --n_epochs 1 --log_every 1
check "e: fine-tuning exits 0 (got $rc; $(tail -n 1 e_ft.err))" [ "$rc" -eq 0 ]
check "e: its log counts from 1 (epoch 1 step, done, validation)" \
  sh -c "grep -q '^epoch 1 step 1/' e_ft.err && grep -q '^epoch 1 done' e_ft.err &&
    grep -q '^epoch 1: validation' e_ft.err && ! grep -q 'epoch 0' e_ft.err"
check "e: its metrics.jsonl has epoch 1 only" \
  [ "$(sed 's/^{"epoch": \([0-9]*\),.*/\1/' ck/e/metrics.jsonl | sort -u | tr '\n' ' ')" = "1 " ]

finish
