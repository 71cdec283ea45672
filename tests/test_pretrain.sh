#!/bin/sh
# tests/test_pretrain.sh — command-line checks for build/ioupos-simsiam and build/ioupos-dino:
# flags and errors, exact resume, learning on phantom data, the run directory.
# Usage: sh tests/test_pretrain.sh BUILD_DIR   (run by tests/run.sh)
# Prints "FAIL: ..." for each failed check, then "test_pretrain: N checks passed, M failed";
# exits 1 if any check failed. Uses one thread (--threads 1) so that a busy machine does not
# slow it down; about 50 s on 2 cores (33 s of CPU).

me=test_pretrain prog=ioupos-simsiam
. "$(dirname "$0")/cli_lib.sh"

simsiam=$bin
dino=${bin%/*}/ioupos-dino
phantom=${bin%/*}/ioupos-phantom
prep=${bin%/*}/ioupos-prep
embed=${bin%/*}/ioupos-embed
need ioupos-dino ioupos-phantom ioupos-prep

# ---- data: 2 small phantom volumes -> 32 PNG slices (about 245 x 345) ----------------------------
"$phantom" --output_dir ph --n_cases 2 --seed 0 --size 96x80x16 --spacing 4,4,2.5 --no_labels \
  >ph.out 2>ph.err &&
  "$prep" --data_dir ph/images --output_dir data >prep.out 2>prep.err
check "phantom data prepared ($(cat ph.err prep.err | tail -n 3))" [ $? -eq 0 ]
n_png=$(ls data | grep -c '\.png$')
check "32 PNG slices (got $n_png)" [ "$n_png" -eq 32 ]
mkdir empty few half
for f in $(ls data | grep '\.png$' | head -n 3); do cp "data/$f" few/; done
# half: the first case's 16 slices, for the many short runs of b (batch 2: 8 steps an epoch, as
# 32 slices at batch 4, at half the cost)
cp data/phantom_000_*.png half/
n_half=$(ls half | grep -c '\.png$')
check "16 PNG slices in half/ (got $n_half)" [ "$n_half" -eq 16 ]

# ---- a. --help and command-line errors ---------------------------------------------------------
common="--embedding_size --drop_path_rate --use_gradient_checkpointing --spatial_dims --a_min
  --a_max --size_x --size_y --size_z --min_iou --max_iou --use_amp --batch_size --n_epochs
  --warmup_epochs --accum_iters --run_name --data_dir --chkpt_dir --seed --num_workers
  --low_resource_mode --crop_size --pair_mode --resume --threads --log_every --max_steps
  --cache_mb --help"
use "$simsiam"
run s_help --help
check "simsiam --help exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in $common --base_lr --end_lr --wd; do
  check "simsiam --help mentions $f" grep -q -- "$f " s_help.out
done
for d in "default 48;" "default 128)" "default 100)" "default 0.025)" "default 1e-06)" \
         "default 1e-05)" "default 0.3)" "default 0.6)" "default 96;" "default 0.1)" \
         "default 4294967295" "default anchored"; do
  check "simsiam --help mentions '$d'" grep -q -- "$d" s_help.out
done
use "$dino"
run d_help --help
check "dino --help exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in $common --out_dim --hidden_dim --bottleneck_dim --norm_last_layer --momentum_teacher \
         --teacher_temp --warmup_teacher_temp --warmup_teacher_temp_epochs --student_temp \
         --center_momentum --weight_decay --weight_decay_end --freeze_last_layer --clip_grad \
         --lr --base_lr --min_lr --n_local_crops --local_crop_size --local_min_iou --local_max_iou; do
  check "dino --help mentions $f" grep -q -- "$f " d_help.out
done
for d in "default 1024;" "default 2048)" "default 256)" "default 0.9995)" "default 0.04)" \
         "default 0.1)" "default 0.9)" "default 0.4)" "default 3)" "default 5e-05)" \
         "default 10)" "default 100:" "default 48;"; do
  check "dino --help mentions '$d'" grep -q -- "$d" d_help.out
done

# refused NAME STATUS PATTERN ARGS...: exits STATUS, stderr matches PATTERN, nothing on stdout,
# no run directory created.
refused() {
  name=$1; want=$2; pattern=$3; shift 3
  expect_error "$name" "$want" "$pattern" --chkpt_dir ck "$@"
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
  check "$name: no run directory left" [ ! -e ck ]
}
for p in "$simsiam" "$dino"; do
  use "$p"
  t=${p##*-}
  refused "${t}_flag" 2 "unknown flag '--bogus'" --data_dir data --bogus 1
  refused "${t}_num" 2 "--batch_size: bad value '12x'" --data_dir data --batch_size 12x
  refused "${t}_num2" 2 "--min_iou: bad value 'abc'" --data_dir data --min_iou abc
  refused "${t}_num3" 2 "--seed: bad value '-1'" --data_dir data --seed -1
  refused "${t}_iou" 2 "--min_iou 0.7 is above --max_iou 0.2" --data_dir data --min_iou 0.7 \
    --max_iou 0.2
  # 3D runs are tests/test_pretrain3d.sh's; here only the 2D side of the boundary
  refused "${t}_3d" 1 "error: data holds 32 PNG slices (e.g. data/phantom_000_000.png) and no \*.nii / \*.nii.gz volumes: 3D pretraining (--spatial_dims 3) reads volumes" \
    --data_dir data --spatial_dims 3
  refused "${t}_crop3" 2 "--crop_size 32,32,16: three sizes are a 3D crop; pass --spatial_dims 3" \
    --data_dir data --crop_size 32,32,16
  refused "${t}_nodata" 2 "--data_dir is required"
  refused "${t}_crop" 2 "--crop_size 32,24: .*square" --data_dir data --crop_size 32,24
  refused "${t}_embed" 2 "--embedding_size 7: " --data_dir data --embedding_size 7
  refused "${t}_switch" 2 "--resume takes no value" --data_dir data --resume=1
  refused "${t}_empty" 1 "error: .*empty" --data_dir empty
  refused "${t}_missing" 1 "error: .*nosuch" --data_dir nosuch
  refused "${t}_few" 1 "error: few has 3 images, fewer than one batch (--batch_size 4)" \
    --data_dir few --batch_size 4
  refused "${t}_resume" 1 "error: .*no training state" --data_dir data --batch_size 4 --resume
done
use "$simsiam"
refused s_bs1 2 "--batch_size: bad value '1'" --data_dir data --batch_size 1
use "$dino"
refused d_lcrop 2 "--local_crop_size 16,12: .*square" --data_dir data --n_local_crops 2 \
  --local_crop_size 16,12
refused d_nlocal 2 "--n_local_crops: bad value '99'" --data_dir data --n_local_crops 99
refused d_nll 2 "--norm_last_layer: bad value '2'" --data_dir data --norm_last_layer 2
refused d_lr 2 "--lr: bad value 'x'" --data_dir data --lr x
refused d_warm 2 "--warmup_epochs 10 must be below --n_epochs 5" --data_dir data --n_epochs 5

# ---- b. exact resume: interrupted (--max_steps) + --resume == uninterrupted ---------------------
# 16 images, batch 2: 8 optimiser steps per epoch, 2 epochs.
tiny="--data_dir half --chkpt_dir ck --run_name r --low_resource_mode --embedding_size 6
  --batch_size 2 --crop_size 32 --n_epochs 2 --num_workers 0 --threads 1"
# no_timing FILE: metrics lines without their wall-clock fields
no_timing() { sed 's/, "images_per_s": [^,}]*//; s/, "seconds": [^,}]*//' "$1"; }
# same_run NAME REF: the run directory ck/r ends byte-identical to REF
same_run() {
  check "$1: checkpoint.safetensors identical to the uninterrupted run's" \
    cmp -s "$2/checkpoint.safetensors" ck/r/checkpoint.safetensors
  check "$1: state.safetensors identical to the uninterrupted run's" \
    cmp -s "$2/state.safetensors" ck/r/state.safetensors
  check "$1: checkpoint_epoch1.safetensors identical" \
    cmp -s "$2/checkpoint_epoch1.safetensors" ck/r/checkpoint_epoch1.safetensors
  no_timing "$2/metrics.jsonl" | grep -v epoch_loss >"$1.m1"
  no_timing ck/r/metrics.jsonl | grep -v epoch_loss >"$1.m2"
  check "$1: metrics.jsonl step lines identical" cmp -s "$1.m1" "$1.m2"
}
for p in "$simsiam" "$dino"; do
  use "$p"
  t=${p##*-}
  extra=""
  [ "$t" = dino ] && extra="--warmup_epochs 1" # the lr warm-up inside the run
  rm -rf ck
  run "${t}_full" $tiny $extra
  check "$t: tiny run exits 0 (got $rc; $(tail -n 2 "${t}_full.err"))" [ "$rc" -eq 0 ]
  n_ep=$(grep -c epoch_loss ck/r/metrics.jsonl 2>/dev/null)
  check "$t: 2 epoch lines in metrics.jsonl (got $n_ep)" [ "$n_ep" = 2 ]
  mv ck/r "ref_$t"
  # k = 3: inside the first epoch; k = 8: at the epoch boundary
  for k in 3 8; do
    rm -rf ck
    run "${t}_stop$k" $tiny $extra --max_steps $k
    check "$t --max_steps $k exits 0 (got $rc; $(tail -n 1 "${t}_stop$k.err"))" [ "$rc" -eq 0 ]
    check "$t --max_steps $k says how to resume" grep -q -- "--resume continues" "${t}_stop$k.err"
    check "$t --max_steps $k leaves state.safetensors" [ -f ck/r/state.safetensors ]
    if [ "$k" -lt 8 ]; then
      check "$t --max_steps $k: no checkpoint before the first epoch ends" \
        [ ! -e ck/r/checkpoint.safetensors ]
    fi
    run "${t}_resume$k" $tiny $extra --resume
    check "$t --resume after $k steps exits 0 (got $rc; $(tail -n 1 "${t}_resume$k.err"))" \
      [ "$rc" -eq 0 ]
    check "$t --resume after $k steps says so" grep -q "resuming ck/r at epoch" "${t}_resume$k.err"
    same_run "${t}_k$k" "ref_$t"
  done
  # two interruptions: 3 steps, 6 more (into the second epoch), then the rest
  rm -rf ck
  run "${t}_c1" $tiny $extra --max_steps 3
  run "${t}_c2" $tiny $extra --max_steps 6 --resume
  c2=$rc
  run "${t}_c3" $tiny $extra --resume
  check "$t: chained resumes exit 0 (got $c2, $rc)" [ "$c2" -eq 0 -a "$rc" -eq 0 ]
  same_run "${t}_chain" "ref_$t"
  # a finished run resumed again: nothing to do, nothing changes
  run "${t}_again" $tiny $extra --resume
  check "$t: resuming a finished run exits 0 (got $rc)" [ "$rc" -eq 0 ]
  same_run "${t}_again" "ref_$t"
  # the same run directory without --resume is refused and left alone
  run "${t}_exists" $tiny $extra
  check "$t: a second run into the same directory exits 1 (got $rc)" [ "$rc" -eq 1 ]
  check "$t: ... naming --resume" grep -q "already holds a run: pass --resume" "${t}_exists.err"
  same_run "${t}_exists" "ref_$t"
  # loader threads do not change the weights (the checkpoint holds no flags)
  rm -rf ck
  run "${t}_workers" $tiny $extra --num_workers 2
  check "$t: --num_workers 2 exits 0 (got $rc)" [ "$rc" -eq 0 ]
  check "$t: --num_workers 2 gives the same checkpoint" \
    cmp -s "ref_$t/checkpoint.safetensors" ck/r/checkpoint.safetensors
done

# ---- b2. DINO multi-crop: 2 local crops of 16 x 16 through the student ---------------------------
use "$dino"
local="--warmup_epochs 1 --n_local_crops 2 --local_crop_size 16"
rm -rf ck
run d_local $tiny $local
check "dino with 2 local crops exits 0 (got $rc; $(tail -n 2 d_local.err))" [ "$rc" -eq 0 ]
check "dino with local crops writes a checkpoint" [ -s ck/r/checkpoint.safetensors ]
check "the local views change the training (checkpoint differs from the run without them)" \
  sh -c '! cmp -s ref_dino/checkpoint.safetensors ck/r/checkpoint.safetensors'
check "flags.json records the local crops" \
  grep -q '"n_local_crops": 2, "local_crop_size": \[16, 16\]' ck/r/flags.json
mv ck/r ref_local
for k in 3 8; do
  rm -rf ck
  run "d_local_stop$k" $tiny $local --max_steps $k
  run "d_local_resume$k" $tiny $local --resume
  check "dino local crops: --max_steps $k then --resume exit 0 (got $rc)" [ "$rc" -eq 0 ]
  same_run "d_local_k$k" ref_local
done

# ---- b3. --resume refuses other flags, key by key; allows the per-invocation ones ---------------
use "$simsiam"
rm -rf ck
run fl_stop $tiny --max_steps 3
cp ck/r/state.safetensors fl_state
run fl_lr $tiny --resume --base_lr 0.05 --pair_mode joint
check "resume with another --base_lr exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "... naming --base_lr and both values" grep -q -- "--base_lr 0.025 (now 0.05)" fl_lr.err
check "... and --pair_mode" grep -q -- '--pair_mode "anchored" (now "joint")' fl_lr.err
check "... leaving the state alone" cmp -s fl_state ck/r/state.safetensors
run fl_ep $tiny --resume --n_epochs 3
check "resume with another --n_epochs exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "... naming --n_epochs (it changes the lr schedule)" grep -q -- "--n_epochs 2 (now 3)" fl_ep.err
run fl_lr2 $tiny --resume --embedding_size 12
check "resume with another --embedding_size exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "... naming it" grep -q -- "--embedding_size 6 (now 12)" fl_lr2.err
check "... leaving the state alone" cmp -s fl_state ck/r/state.safetensors
# stored flags that are not JSON (the comma after embedding_size made a '[', same length): refused
# with the place of the fault (section 6's JSON reader), the state left as it was
perl -pi -e 's/\\"embedding_size\\": 6,/\\"embedding_size\\": [6/' ck/r/state.safetensors
check "the stored flags were corrupted for the test" sh -c '! cmp -s fl_state ck/r/state.safetensors'
cp ck/r/state.safetensors fl_bad
run fl_json $tiny --resume
check "resume with corrupt stored flags exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "... saying where the JSON is wrong ($(tail -n 1 fl_json.err))" \
  grep -q "stored flags are not a flat JSON object (the stored flags:1:[0-9]*: expected ',' or ']')" fl_json.err
check "... leaving the state alone" cmp -s fl_bad ck/r/state.safetensors
cp fl_state ck/r/state.safetensors
run fl_ok $tiny --resume --num_workers 2 --threads 2 --log_every 3
check "resume with other --num_workers, --threads, --log_every exits 0 (got $rc; $(tail -n 1 fl_ok.err))" \
  [ "$rc" -eq 0 ]
check "... and gives the uninterrupted run's checkpoint" \
  cmp -s ref_simsiam/checkpoint.safetensors ck/r/checkpoint.safetensors

# ---- b4. SIGINT / SIGTERM: the state is saved at the step boundary, --resume finishes the run ----
# 8 epochs of 8 steps (about 2 s) so that the signal lands mid-run. A script's background job
# starts with SIGINT ignored (which the command respects), so SIGINT goes through
# env --default-signal=INT (GNU coreutils 8.31+); without it both cases use SIGTERM.
use "$simsiam"
long="--data_dir half --chkpt_dir ck --run_name r --low_resource_mode --embedding_size 6
  --batch_size 2 --crop_size 32 --n_epochs 8 --num_workers 0 --threads 1"
rm -rf ck
run sig_full $long
check "8-epoch run exits 0 (got $rc)" [ "$rc" -eq 0 ]
mv ck/r ref_long
# interrupt NAME SIGNAL STATUS WAIT_FOR: start the run in the background, send SIGNAL once its
# stderr shows WAIT_FOR, expect exit STATUS and the "--resume continues" line, then resume.
interrupt() {
  name=$1; sig=$2; want=$3; mark=$4
  rm -rf ck
  if [ "$sig" = INT ] && env --default-signal=INT true 2>/dev/null; then
    env --default-signal=INT "$bin" $long >"$name.out" 2>"$name.err" &
  else
    [ "$sig" = INT ] && { sig=TERM; want=143; }
    "$bin" $long >"$name.out" 2>"$name.err" &
  fi
  pid=$!
  i=0
  while [ $i -lt 1000 ] && ! grep -q -- "$mark" "$name.err" 2>/dev/null; do
    sleep 0.01; i=$((i + 1))
  done
  kill -"$sig" "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
  check "$name: SIG$sig stops the run with status $want (got $rc; $(tail -n 1 "$name.err"))" \
    [ "$rc" -eq "$want" ]
  check "$name: it stopped early and says --resume continues" \
    grep -q "^interrupted after .*--resume continues" "$name.err"
  check "$name: the state is saved" [ -f ck/r/state.safetensors ]
  run "${name}_resume" $long --resume
  check "$name: --resume exits 0 (got $rc)" [ "$rc" -eq 0 ]
  same_run "$name" ref_long
}
interrupt sigint INT 130 "simsiam: 16 images"
interrupt sigterm TERM 143 "epoch 1 done"

# ---- c. SimSiam learns on the phantom slices (toy size, 10 epochs of 4 steps) ----------------
use "$simsiam"
rm -rf ck
run learn --data_dir data --chkpt_dir ck --run_name learn --low_resource_mode --embedding_size 12 \
  --batch_size 8 --crop_size 32 --n_epochs 10 --base_lr 0.1 --num_workers 1 --threads 1 \
  --use_amp --use_gradient_checkpointing --a_min -400 --size_z 2
check "learning run exits 0 (got $rc; $(tail -n 2 learn.err))" [ "$rc" -eq 0 ]
for n in "--use_amp ignored" "--use_gradient_checkpointing ignored" "only matter to ioupos-prep"; do
  c=$(grep -c -- "$n" learn.err)
  check "learning run notes '$n' once (got $c)" [ "$c" -eq 1 ]
done
m=ck/learn/metrics.jsonl
first=$(grep epoch_loss "$m" | head -n 1 | sed 's/.*"epoch_loss": \([^,}]*\).*/\1/')
last=$(grep epoch_loss "$m" | tail -n 1 | sed 's/.*"epoch_loss": \([^,}]*\).*/\1/')
coll=$(grep epoch_loss "$m" | tail -n 1 | sed 's/.*"collapse": \([^,}]*\).*/\1/')
n_ep=$(grep -c epoch_loss "$m")
echo "$me: SimSiam on phantom slices: epoch loss $first -> $last over $n_ep epochs, collapse $coll"
check "10 epoch lines (got $n_ep)" [ "$n_ep" -eq 10 ]
check "the loss falls by more than 0.1 (first epoch $first, last $last)" \
  awk -v a="$first" -v b="$last" 'BEGIN { exit !(a != "" && b != "" && b + 0 < a - 0.1) }'
check "the collapse level stays below 0.9 (got $coll)" \
  awk -v c="$coll" 'BEGIN { exit !(c != "" && c + 0 >= 0 && c + 0 < 0.9) }'

# ---- d. the run directory ----------------------------------------------------------------------
# st_names FILE: the tensor names of a safetensors file, one per line (header: u64 LE length,
# then JSON)
st_names() {
  len=$(od -An -tu1 -N8 "$1" | awk '{ v = 0; for (i = NF; i >= 1; --i) v = v * 256 + $i; print v }')
  head -c $((8 + len)) "$1" | tail -c "$len" | grep -o '"[^"]*":{"dtype"' | sed 's/":{"dtype"$//; s/^"//'
}
# json_ok FILE: one line, an object, brackets balanced outside strings, strings closed
json_ok() {
  [ "$(wc -l <"$1")" -eq 1 ] && awk '
    { s = $0; depth = 0; ins = 0; bad = 0
      if (substr(s, 1, 1) != "{") bad = 1
      for (i = 1; i <= length(s) && !bad; ++i) {
        c = substr(s, i, 1)
        if (ins) { if (c == "\\") ++i; else if (c == "\"") ins = 0; continue }
        if (c == "\"") ins = 1
        else if (c == "{" || c == "[") ++depth
        else if (c == "}" || c == "]") { if (--depth < 0) bad = 1; if (depth == 0 && i != length(s)) bad = 1 }
      }
      exit !( !bad && !ins && depth == 0 ) }' "$1"
}
for t in simsiam dino; do
  d=ref_$t
  for f in flags.json metrics.jsonl checkpoint.safetensors checkpoint_epoch1.safetensors \
           checkpoint_epoch2.safetensors state.safetensors; do
    check "$t run directory holds $f" [ -s "$d/$f" ]
  done
  left=$(ls -a "$d" | grep -c -v -e '^\.\.*$' -e '^flags\.json$' -e '^metrics\.jsonl$' \
         -e '^checkpoint\.safetensors$' -e '^checkpoint_epoch[0-9]*\.safetensors$' \
         -e '^state\.safetensors$')
  check "$t run directory holds nothing else (no temporary files; $left others)" [ "$left" -eq 0 ]
  check "$t flags.json is one JSON object" json_ok "$d/flags.json"
  check "$t flags.json holds the seed" grep -q '"seed": 4294967295' "$d/flags.json"
  check "$t flags.json holds the commit" grep -q '"commit": "[0-9a-zA-Z+]\{4,\}"' "$d/flags.json"
  check "$t flags.json holds the resolved flags" \
    grep -q '"flags": {"method": "'$t'", .*"embedding_size": 6, .*"crop_size": \[32, 32\], .*"batch_size": 2, .*"git_commit": ' "$d/flags.json"
  bad=$(grep -c -v '^{"epoch": [0-9]*, "step": [0-9]*, .*}$' "$d/metrics.jsonl")
  check "$t metrics.jsonl: every line a JSON object with epoch and step ($bad not)" [ "$bad" -eq 0 ]
  st_names "$d/checkpoint.safetensors" >"$t.names"
  check "$t checkpoint holds backbone.patch_embed.proj.weight" \
    grep -qx 'backbone\.patch_embed\.proj\.weight' "$t.names"
  check "$t checkpoint holds the last stage (backbone.layers4.0.blocks.1.mlp.linear2.weight)" \
    grep -qx 'backbone\.layers4\.0\.blocks\.1\.mlp\.linear2\.weight' "$t.names"
  st_names "$d/state.safetensors" >"$t.state_names"
  check "$t state holds train.counters" grep -qx 'train\.counters' "$t.state_names"
done
other=$(grep -c -v -e '^backbone\.' -e '^projection_head\.layers\.' -e '^prediction_head\.layers\.' simsiam.names)
check "simsiam checkpoint: names under backbone. / projection_head. / prediction_head. ($other others)" \
  [ "$other" -eq 0 ]
other=$(grep -c -v -e '^backbone\.' -e '^head\.' -e '^student\.backbone\.' -e '^student\.head\.' dino.names)
check "dino checkpoint: teacher under backbone. / head., student under student. ($other others)" \
  [ "$other" -eq 0 ]
check "dino checkpoint holds the head's last layer" grep -qx 'head\.last_layer\.weight_v' dino.names

# the checkpoints load into ioupos-embed (its backbone.* is the encoder)
if [ -x "$embed" ]; then
  for t in simsiam dino; do
    "$embed" --chkpt_path "ref_$t/checkpoint.safetensors" --data_dir few --output "$t.npy" \
      --embedding_size 6 --threads 1 >"$t.embed.out" 2>"$t.embed.err"
    check "ioupos-embed loads the $t checkpoint (rc $?; $(tail -n 1 "$t.embed.err"))" [ -s "$t.npy" ]
  done
fi

finish
