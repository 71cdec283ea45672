#!/bin/sh
# tests/test_finetune.sh — command-line checks for build/ioupos-finetune on phantom data:
# learning (a), exact resume (b), checkpoint loading and its errors (c), evaluation only and
# --predict_dir (d), flag and data errors (e).
# Usage: sh tests/test_finetune.sh BUILD_DIR   (run by tests/run.sh)
# Prints "FAIL: ..." for each failed check, then "test_finetune: N checks passed, M failed";
# exits 1 if any check failed. One thread (--threads 1); about 60 s on 2 cores (45 s of CPU),
# most of it part a, the learning check on d.

me=test_finetune prog=ioupos-finetune
. "$(dirname "$0")/cli_lib.sh"

ft=$bin
need ioupos-phantom ioupos-prep ioupos-simsiam ioupos-dino st_rename

# ---- data: 4 labelled phantom cases, split 2/1/1, 16 slices each (61 x 86 at 4 mm) -----------
"$bdir/ioupos-phantom" --output_dir ph --n_cases 4 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
  --split 2,1,1 >ph.out 2>ph.err &&
  "$bdir/ioupos-prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
    --output_dir d --size_x 4 --size_y 4 --pad_to 32 --num_workers 2 >prep.out 2>prep.err
check "phantom data prepared ($(tail -n 1 prep.err))" [ $? -eq 0 ]
# s: the same cases at 8 x 8 x 5 mm for the checks of the mechanisms (b to e): 8 slices a case of
# about 32 x 40 (2 sliding windows a slice against d's 12), so that their many runs stay cheap
"$bdir/ioupos-prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
  --output_dir s --size_x 8 --size_y 8 --size_z 5 --pad_to 32 --num_workers 2 \
  >prep_s.out 2>prep_s.err
check "small phantom data prepared ($(tail -n 1 prep_s.err))" [ $? -eq 0 ]
for s in train val test; do
  n=$(ls "d/$s" | grep -c '\.png$')
  want=32; [ "$s" = train ] || want=16
  check "d/$s has $want slices (got $n)" [ "$n" -eq "$want" ]
  n=$(ls "s/$s" | grep -c '\.png$')
  want=16; [ "$s" = train ] || want=8
  check "s/$s has $want slices (got $n)" [ "$n" -eq "$want" ]
done
common="--data_dir d --split_path ph/split.json --crop_size 32 --batch_size 4 --threads 1
  --chkpt_dir ck"
# small: the flags of parts b to e (16 training slices, batch 2: 8 steps per epoch as in d)
small="--data_dir s --split_path ph/split.json --crop_size 32 --batch_size 2 --threads 1
  --chkpt_dir ck"
# score FILE: the value of the "score <split> <metric> <value>" line
score() { sed -n 's/^score [a-z]* [a-z]* //p' "$1"; }
# organ FILE NAME: the DSC column of an organ's row of the printed table
organ() { awk -v n="$2" '$0 ~ "^ *[0-9]+  " n " " { print $(NF - 3) }' "$1"; }
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 > b + 0) }'; }

# ---- a. learning: a short fine-tuning beats the untrained model by far ------------------------
# The untrained model (seed default) scores 0.004-0.011 mean DSC for the seeds tried (1, 2, 3,
# 4294967295); 10 epochs of 8 steps (C 12, lr 5e-3) reach about 0.04 (liver about 0.55, the small
# organs still 0). The bound 0.02 lies a factor 2 from both.
bound=0.02
run a_untrained $common --embedding_size 12 --n_epochs 0 --run_name untrained
check "a: --n_epochs 0 (untrained) exits 0 (got $rc; $(tail -n 1 a_untrained.err))" [ "$rc" -eq 0 ]
u=$(score a_untrained.out)
run a_trained $common --embedding_size 12 --n_epochs 10 --base_lr 5e-3 --warmup_epochs 1 \
  --eval_every 5 --run_name trained --log_every 1000
check "a: fine-tuning exits 0 (got $rc; $(tail -n 1 a_trained.err))" [ "$rc" -eq 0 ]
t=$(score a_trained.out)
tl=$(organ a_trained.out liver)
ul=$(organ a_untrained.out liver)
echo "test_finetune: test mean DSC untrained ${u:-?}, after 10 epochs ${t:-?} (bound $bound);" \
  "liver ${ul:-?} -> ${tl:-?}"
check "a: the untrained model scores below $bound (got '$u')" gt "$bound" "${u:-1}"
check "a: the fine-tuned model scores above $bound (got '$t')" gt "${t:-0}" "$bound"
check "a: the fine-tuned liver DSC is above 0.3 (got '$tl')" gt "${tl:-0}" 0.3
check "a: validation DSC improved over the run (2 validations)" \
  [ "$(grep -c '"val_dsc"' ck/trained/metrics.jsonl)" -eq 2 ]
for f in flags.json metrics.jsonl checkpoint.safetensors best.safetensors state.safetensors \
         results.json; do
  check "a: the run directory has $f" [ -s "ck/trained/$f" ]
done
check "a: results.json reports the test split" \
  grep -q '^{"reported": {"split": "test", "metric": "dsc", "score": ' ck/trained/results.json
check "a: results.json holds the per-organ tables and cases" \
  grep -q '"val": {"table": {"classes":14,"cases":1,.*"test": {"table": ' ck/trained/results.json
check "a: stdout has the per-organ table" grep -q "^ 13  left kidney" a_trained.out
check "a: the log says it scored the best checkpoint on the held-out test split" \
  grep -q "^test mean DSC .*held-out test split" a_trained.err
# the best checkpoint, loaded whole (--n_epochs 0), reproduces the reported score exactly
run a_reload $common --embedding_size 12 --n_epochs 0 --run_name reload \
  --chkpt_path ck/trained/best.safetensors
check "a: --n_epochs 0 on best.safetensors exits 0 (got $rc; $(tail -n 1 a_reload.err))" [ "$rc" -eq 0 ]
check "a: ... loads the whole SwinUNETR" grep -q "loaded a whole SwinUNETR from .*: [0-9]* tensors" \
  a_reload.err
check "a: ... and reproduces the reported score ($(score a_reload.out) vs $t)" \
  [ "$(score a_reload.out)" = "$t" ]
sed 's/^{"reported".*"val": //' ck/trained/results.json >a_tables1
sed 's/^{"reported".*"val": //' ck/reload/results.json >a_tables2
check "a: ... and the same per-organ tables, case by case" cmp -s a_tables1 a_tables2
# --metric research: the research per-slice Dice beside ours (the trained model on s: these
# checks do not look at the scores, and s has a twelfth of d's sliding windows)
run a_research $small --embedding_size 12 --n_epochs 0 --run_name research --metric research \
  --chkpt_path ck/trained/best.safetensors
check "a: --metric research exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "a: ... reports the research score" grep -q "^score test research 0\.[0-9]*$" a_research.out
check "a: ... and prints its row beside ours" grep -qi "research" a_research.out
check "a: ... and writes it into results.json" \
  grep -q '"research":{"metric":"monai_dicemetric_per_slice"' ck/research/results.json

# ---- b. exact resume: interrupted (--max_steps) + --resume == uninterrupted ---------------------
# 16 slices (s), batch 2: 8 steps per epoch; 2 epochs, validation after each; C 6.
tiny="$small --run_name r --embedding_size 6 --n_epochs 2 --warmup_epochs 1 --eval_every 1
  --log_every 3 --num_workers 0"
no_timing() { sed 's/, "slices_per_s": [^,}]*//; s/, "seconds": [^,}]*//' "$1"; }
same_run() { # same_run NAME REF: ck/r ends byte-identical to REF
  for f in checkpoint best state; do
    check "$1: $f.safetensors identical to the uninterrupted run's" \
      cmp -s "$2/$f.safetensors" "ck/r/$f.safetensors"
  done
  check "$1: results.json identical" cmp -s "$2/results.json" ck/r/results.json
  no_timing "$2/metrics.jsonl" >"$1.m1"
  no_timing ck/r/metrics.jsonl >"$1.m2"
  check "$1: metrics.jsonl identical (without timings)" cmp -s "$1.m1" "$1.m2"
}
use "$ft"
rm -rf ck/r
run b_full $tiny
check "b: tiny run exits 0 (got $rc; $(tail -n 1 b_full.err))" [ "$rc" -eq 0 ]
check "b: 2 validation lines in metrics.jsonl" [ "$(grep -c '"val_dsc"' ck/r/metrics.jsonl)" -eq 2 ]
mv ck/r ref
for k in 3 8 11; do # inside epoch 1, at its end (after its validation), inside epoch 2
  rm -rf ck/r
  run "b_stop$k" $tiny --max_steps $k
  check "b: --max_steps $k exits 0 (got $rc; $(tail -n 1 "b_stop$k.err"))" [ "$rc" -eq 0 ]
  check "b: --max_steps $k says how to resume" grep -q -- "--resume continues" "b_stop$k.err"
  check "b: --max_steps $k prints no table" [ ! -s "b_stop$k.out" ]
  check "b: --max_steps $k writes no results.json" [ ! -e ck/r/results.json ]
  run "b_resume$k" $tiny --resume
  check "b: --resume after $k steps exits 0 (got $rc; $(tail -n 1 "b_resume$k.err"))" [ "$rc" -eq 0 ]
  check "b: --resume after $k steps says so" grep -q "^resuming ck/r at epoch" "b_resume$k.err"
  same_run "b_k$k" ref
done
rm -rf ck/r
run b_c1 $tiny --max_steps 5
run b_c2 $tiny --max_steps 6 --resume
c2=$rc
run b_c3 $tiny --resume
check "b: chained resumes exit 0 (got $c2, $rc)" \
  [ "$c2" -eq 0 -a "$rc" -eq 0 ]
same_run b_chain ref
run b_again $tiny --resume
check "b: resuming a finished run exits 0 (got $rc)" [ "$rc" -eq 0 ]
same_run b_again ref
run b_exists $tiny
check "b: a second run into the same directory exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "b: ... naming --resume" grep -q "already holds a run: pass --resume" b_exists.err
same_run b_exists ref
rm -rf ck/r
run b_stop $tiny --max_steps 3
cp ck/r/state.safetensors b_state
run b_lr $tiny --resume --base_lr 0.05
check "b: resume with another --base_lr exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "b: ... naming it and both values" grep -q -- "--base_lr 0.001 (now 0.05)" b_lr.err
run b_ep $tiny --resume --n_epochs 3
check "b: resume with another --n_epochs exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "b: ... naming it" grep -q -- "--n_epochs 2 (now 3)" b_ep.err
check "b: ... leaving the state alone" cmp -s b_state ck/r/state.safetensors
run b_nostate $small --run_name none --embedding_size 6 --resume
check "b: --resume without a state exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "b: ... saying so" grep -q "no training state at ck/none/state.safetensors" b_nostate.err
rm -rf ck/r
run b_workers $tiny --num_workers 2 --threads 2
check "b: --num_workers 2 --threads 2 exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "b: ... gives the same best and last checkpoints" \
  cmp -s ref/best.safetensors ck/r/best.safetensors
check "b: ... (last)" cmp -s ref/checkpoint.safetensors ck/r/checkpoint.safetensors
check "b: ... and results" cmp -s ref/results.json ck/r/results.json
# --patience counts epochs: with a learning rate too small to change a float32 weight the
# validation score never improves after epoch 1, so --patience 2 stops the run after epoch 3
# (--end_lr too: the cosine ends at --end_lr, default 5e-05, which on s moves the score)
rm -rf ck/p
run b_pat $small --run_name p --embedding_size 6 --n_epochs 8 --warmup_epochs 0 \
  --base_lr 1e-12 --end_lr 1e-12 --eval_every 1 --patience 2
check "b: --patience run exits 0 (got $rc; $(tail -n 1 b_pat.err))" [ "$rc" -eq 0 ]
check "b: ... stops early, naming the epochs" \
  grep -q "^early stop: no better validation score for 2 epochs (--patience 2)" b_pat.err
check "b: ... after epoch 3 with the best from epoch 1" \
  grep -q '"best_epoch": 1, "best_val_score": [0-9.e-]*, "epochs_done": 3, "stopped_early": true' \
  ck/p/results.json
check "b: ... says so on stdout" grep -q "(epoch 1 of 3, stopped early)" b_pat.out
check "b: ... metrics count the epochs since the best" \
  grep -q '"best_epoch": 1, "epochs_since_best": 2}' ck/p/metrics.jsonl
run b_pat2 $small --run_name p --embedding_size 6 --n_epochs 8 --warmup_epochs 0 \
  --base_lr 1e-12 --end_lr 1e-12 --eval_every 1 --patience 2 --resume
check "b: resuming an early-stopped run trains no more (got $rc)" \
  sh -c "[ $rc -eq 0 ] && ! grep -q '^epoch 3 step' b_pat2.err && grep -q 'epochs_done\": 3' ck/p/results.json"
# an evaluation needs no train split
mkdir -p evald
cp -r s/val s/test evald/
run b_evald $small --data_dir evald --run_name evald --embedding_size 6 --n_epochs 0
check "b: --n_epochs 0 without a train folder exits 0 (got $rc; $(tail -n 1 b_evald.err))" [ "$rc" -eq 0 ]

# SIGTERM at an epoch boundary: the state is saved, exit 143, --resume finishes the run
long="$small --run_name r --embedding_size 6 --n_epochs 6 --warmup_epochs 1 --eval_every 2
  --log_every 100"
rm -rf ck/r
run b_long $long
mv ck/r ref_long
"$ft" $long >b_sig.out 2>b_sig.err &
pid=$!
i=0
while [ $i -lt 1500 ] && ! grep -q "epoch 2 done" b_sig.err 2>/dev/null; do
  sleep 0.01; i=$((i + 1))
done
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
check "b: SIGTERM stops the run with status 143 (got $rc; $(tail -n 1 b_sig.err))" [ "$rc" -eq 143 ]
check "b: ... saying --resume continues" grep -q "^interrupted after .*--resume continues" b_sig.err
run b_sig_resume $long --resume
check "b: ... and --resume finishes it (got $rc)" [ "$rc" -eq 0 ]
same_run b_sig ref_long

# ---- c. initial weights: SSL checkpoints, MONAI state dicts, and the errors -------------------
# (on d: s's slices, about 32 x 40, have no pair of 32 x 32 crops with an IoU in [0.3, 0.6])
data_ssl="--data_dir d/train --chkpt_dir ssl --low_resource_mode --embedding_size 6
  --batch_size 4 --crop_size 32 --n_epochs 1 --num_workers 0 --threads 1"
"$bdir/ioupos-simsiam" $data_ssl --run_name s >c_ss.out 2>c_ss.err
check "c: a tiny SimSiam pretraining exits 0 ($(tail -n 1 c_ss.err))" [ -s ssl/s/checkpoint.safetensors ]
"$bdir/ioupos-dino" $data_ssl --run_name d --warmup_epochs 0 >c_dn.out 2>c_dn.err
check "c: a tiny DINO pretraining exits 0 ($(tail -n 1 c_dn.err))" [ -s ssl/d/checkpoint.safetensors ]
ss=ssl/s/checkpoint.safetensors
ev="$small --embedding_size 6 --n_epochs 0"
run c_ss $ev --run_name c_ss --chkpt_path $ss --predict_dir pred_ss
check "c: from the SimSiam checkpoint exits 0 (got $rc; $(tail -n 1 c_ss.err))" [ "$rc" -eq 0 ]
n_enc=$(sed -n "s/^loaded the encoder from .*: \([0-9]*\) tensors under 'backbone\.'.*/\1/p" c_ss.err)
n_oth=$(sed -n "s/.* \([0-9]*\) other file tensors ignored.*/\1/p" c_ss.err)
check "c: ... loads the encoder under 'backbone.' (got '$n_enc' tensors)" [ "${n_enc:-0}" -gt 50 ]
check "c: ... and ignores the SimSiam heads (got '$n_oth' tensors)" [ "${n_oth:-0}" -gt 10 ]
run c_dino $ev --run_name c_dino --chkpt_path ssl/d/checkpoint.safetensors
check "c: from the DINO checkpoint exits 0 (got $rc; $(tail -n 1 c_dino.err))" [ "$rc" -eq 0 ]
check "c: ... loads the teacher (backbone.), the same tensors, and ignores the student" \
  grep -q "^loaded the encoder from .*: $n_enc tensors under 'backbone\.'" c_dino.err
run c_scratch $ev --run_name c_scratch --predict_dir pred_scratch
check "c: the loaded encoder changes the predictions (vs from scratch; same decoder init)" \
  sh -c '! diff -r -q pred_ss pred_scratch >/dev/null'
# the same encoder as a MONAI state dict (swinViT.*) and with bare SwinTransformer names
"$bdir/st_rename" $ss monai.safetensors backbone.=swinViT. >/dev/null 2>&1
"$bdir/st_rename" $ss bare.safetensors backbone.= >/dev/null 2>&1
for f in monai bare; do
  run "c_$f" $ev --run_name "c_$f" --chkpt_path $f.safetensors --predict_dir "pred_$f"
  check "c: from the $f state dict exits 0 (got $rc; $(tail -n 1 "c_$f.err"))" [ "$rc" -eq 0 ]
  check "c: ... gives exactly the SimSiam checkpoint's predictions" diff -r -q pred_ss "pred_$f"
  check "c: ... and scores" [ "$(score "c_$f.out")" = "$(score c_ss.out)" ]
done
# errors: exit 1, the reason names the file / tensor / shapes, and no run directory is made
load_err() { # load_err NAME PATTERN ARGS...
  name=$1; pattern=$2; shift 2
  rm -rf ck/lerr
  expect_error "$name" 1 "$pattern" $common --run_name lerr "$@"
  check "$name: no run directory left" [ ! -e ck/lerr ]
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
}
load_err c_embed "$ss: checkpoint tensor 'backbone.patch_embed.proj.weight' has shape \[6, 1, 2, 2\], the model expects \[12, 1, 2, 2\]" \
  --embedding_size 12 --chkpt_path $ss
"$bdir/st_rename" $ss noenc.safetensors decoder. >/dev/null 2>&1
load_err c_noenc "noenc.safetensors holds no Swin encoder" --embedding_size 6 --chkpt_path noenc.safetensors
load_err c_missing "no_such.safetensors: cannot open" --embedding_size 6 --chkpt_path no_such.safetensors
printf 'not a safetensors file' >junk.safetensors
load_err c_junk "junk.safetensors" --embedding_size 6 --chkpt_path junk.safetensors
load_err c_classes "checkpoint tensor 'out.conv.conv.weight' has shape \[14, 12, 1, 1\], the model expects \[20, 12, 1, 1\]" \
  --embedding_size 12 --n_classes 20 --chkpt_path ck/trained/best.safetensors

# ---- d. --n_epochs 0 and --predict_dir ---------------------------------------------------------
check "d: --predict_dir wrote val/ and test/" [ -d pred_ss/val -a -d pred_ss/test ]
for s in val test; do
  ls "s/$s" | grep '\.png$' >"d_in_$s"
  ls "pred_ss/$s" >"d_out_$s"
  check "d: pred/$s has the input slice names ($(wc -l <"d_out_$s") files)" cmp -s "d_in_$s" "d_out_$s"
done
f0=$(head -n 1 d_in_test)
check "d: the predictions are PNGs" is_png "pred_ss/test/$f0"
# IHDR width and height (bytes 16-23) equal the input's
check "d: a prediction has its slice's size" \
  [ "$(od -An -tx1 -j16 -N8 "pred_ss/test/$f0")" = "$(od -An -tx1 -j16 -N8 "s/test/$f0")" ]
check "d: --n_epochs 0 writes results.json and flags.json, no model files" \
  [ -s ck/c_ss/results.json -a -s ck/c_ss/flags.json -a ! -e ck/c_ss/state.safetensors \
    -a ! -e ck/c_ss/best.safetensors ]
check "d: --n_epochs 0 prints the test table" grep -q "^test split, $ss, 1 cases" c_ss.out
run d_sw $ev --run_name d_sw --chkpt_path $ss --predict_dir pred_sw --sw_batch_size 3
check "d: --sw_batch_size 3 exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "d: ... gives the same results.json (windows batched any way)" \
  cmp -s ck/c_ss/results.json ck/d_sw/results.json
check "d: ... and the same predictions" diff -r -q pred_ss pred_sw

# ---- e. command line and data errors -------------------------------------------------------------
run e_help --help
check "e: --help exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in --data_dir --split_path --chkpt_path --embedding_size --spatial_dims --n_classes \
         --batch_size --n_crops_per_ct --sw_batch_size --sw_overlap --n_epochs --base_lr \
         --end_lr --warmup_epochs --wd --patience --eval_every --eval_train --use_amp --seed \
         --num_workers --run_name --chkpt_dir --ignore_user_warning --low_resource_mode \
         --resume --predict_dir --metric --crop_size --threads --max_steps --drop_path_rate \
         --log_every --cache_mb --device; do
  check "e: --help mentions $f" grep -q -- "$f " e_help.out
done
for dflt in "default 14:" "default 48;" "default 96)" "default 32)" "default 2)" "default 64)" \
            "default 0.25)" "default 225)" "default 0.001)" "default 5e-05;" "default 10)" \
            "default 1e-05)" "default 20;" "default 4294967295)" "default 1024)"; do
  check "e: --help mentions '$dflt'" grep -q -- "$dflt" e_help.out
done
refused() { # refused NAME STATUS PATTERN ARGS...: and no run directory, nothing on stdout
  name=$1; want=$2; pattern=$3; shift 3
  rm -rf ck/e
  expect_error "$name" "$want" "$pattern" --chkpt_dir ck --run_name e "$@"
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
  check "$name: no run directory left" [ ! -e ck/e ]
}
refused e_flag 2 "unknown flag '--bogus'" --data_dir d --bogus 1
refused e_req 2 "--data_dir is required" --n_epochs 1
refused e_crop 2 "--crop_size: bad value '48': must be a multiple of 32" --data_dir d --crop_size 48
refused e_metric 2 "--metric: bad value 'dice': expected ours or research" --data_dir d --metric dice
refused e_overlap 2 "--sw_overlap: bad value '1'" --data_dir d --sw_overlap 1
refused e_dims 1 "image folder d/train holds no volumes" --data_dir d --spatial_dims 3
refused e_crop3 2 "--crop_size 32,32,64: per-axis sizes need --spatial_dims 3" --data_dir d \
  --crop_size 32,32,64
refused e_warm 2 "--warmup_epochs 10 must be below --n_epochs 5" --data_dir d --n_epochs 5
refused e_heads 2 "--embedding_size 5: the stages' 3, 6, 12, 24 attention heads" --data_dir d \
  --embedding_size 5
refused e_pat 2 "--patience: bad value '2.5'" --data_dir d --patience 2.5
refused e_resume0 2 "--resume with --n_epochs 0" --data_dir d --n_epochs 0 --resume
refused e_name 2 "--run_name: bad value 'a/b'" --data_dir d --run_name a/b
refused e_switch 2 "--eval_train takes no value" --data_dir d --eval_train=1
refused e_classes 2 "--n_classes: bad value '1'" --data_dir d --n_classes 1
refused e_nosplit 1 "d/train/train: no train split folder" --data_dir d/train --embedding_size 6
rm -rf ck/e
expect_error e_label 1 "label [0-9]* .*outside \[0, 8) (--n_classes 8)" $small --run_name e \
  --embedding_size 6 --n_epochs 1 --warmup_epochs 0 --n_classes 8
printf '{"train": ["phantom_000", "phantom_001"], "val": ["phantom_003"], "test": ["phantom_002"]}' \
  >wrong_split.json
refused e_split 1 "wrong_split.json lists case 'phantom_003' under 'val' but d/val has no slices of it" \
  --data_dir d --split_path wrong_split.json --embedding_size 6
refused e_small 1 "d/train has 32 slices, fewer than one batch (--batch_size 64)" \
  --data_dir d --embedding_size 6 --batch_size 64
rm -rf ck/e
expect_error e_nan 1 "the loss is .* at epoch 1 step [0-9]*: stopping" $small --run_name e \
  --embedding_size 6 --n_epochs 2 --warmup_epochs 0 --base_lr 1e6
check "e_nan: no checkpoint of the broken weights" [ ! -e ck/e/checkpoint.safetensors ]
run e_amp $small --run_name amp --embedding_size 6 --n_epochs 0 --use_amp --ignore_user_warning
check "e: --use_amp and --ignore_user_warning are accepted (got $rc)" [ "$rc" -eq 0 ]
check "e: ... with a note on --use_amp" grep -q "note: --use_amp ignored" e_amp.err

finish
