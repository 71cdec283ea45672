#!/bin/sh
# tests/test_pretrain3d.sh — build/ioupos-simsiam and build/ioupos-dino with --spatial_dims 3:
# 3D crops of NIfTI volumes, exact resume, learning, the checkpoint as MONAI's 3D
# SwinTransformer, and the bad inputs of 3D named before anything is written.
# Usage: sh tests/test_pretrain3d.sh BUILD_DIR   (run by tests/run.sh)
# Prints "FAIL: ..." for each failed check, then "test_pretrain3d: N checks passed, M failed";
# exits 1 if any check failed. One thread (--threads 1): about 13 s of CPU, 20-30 s on 2 busy cores.
#
# Data: ioupos-phantom cases of 40x32x16 voxels at 8 x 8 x 5 mm, through
# `ioupos-prep --spatial_dims 3` at that spacing: volumes of about 32 x 24 x 16 voxels (X, Y, Z),
# float32 in [0, 1]. Crops 16,16,8 (X = Y, as the 3D rot90 needs; 8 x 8 x 4 tokens after the
# patch embedding, so the z window shrinks to 4 and nothing is padded to 14^3), C 12.

here=$(cd "$(dirname "$0")" && pwd)
names_fixture=$here/fixtures/pretrain3d/swin3d_c12_names.txt
me=test_pretrain3d prog=ioupos-simsiam
. "$(dirname "$0")/cli_lib.sh"

simsiam=$bin
dino=$bdir/ioupos-dino
phantom=$bdir/ioupos-phantom
prep=$bdir/ioupos-prep
need ioupos-dino ioupos-phantom ioupos-prep
check "the MONAI name fixture is there ($names_fixture)" [ -s "$names_fixture" ]

# ---- data ---------------------------------------------------------------------------------------
# vol: 16 volumes; eight: the first 8 (the resume runs); small: 2 volumes of about 10 x 7 x 6,
# smaller than the crop on every axis; pngs: the small cases as 2D slices; empty: nothing.
"$phantom" --output_dir ph --n_cases 16 --seed 0 --size 40x32x16 --spacing 8,8,5 --no_labels \
  >ph.out 2>ph.err &&
  "$prep" --data_dir ph/images --output_dir vol --spatial_dims 3 --size_x 8 --size_y 8 \
    --size_z 5 --pad_to 24 >prep.out 2>prep.err &&
  "$phantom" --output_dir phs --n_cases 2 --seed 5 --size 12x12x6 --spacing 8,8,5 --no_labels \
    >phs.out 2>phs.err &&
  "$prep" --data_dir phs/images --output_dir small --spatial_dims 3 --size_x 8 --size_y 8 \
    --size_z 5 --pad_to 1 >preps.out 2>preps.err &&
  "$prep" --data_dir phs/images --output_dir pngs --size_x 8 --size_y 8 --size_z 5 --pad_to 1 \
    >prepp.out 2>prepp.err
check "phantom volumes prepared ($(cat ./*.err | tail -n 3))" [ $? -eq 0 ]
n_vol=$(ls vol | grep -c '\.nii\.gz$')
check "16 volumes in vol/ (got $n_vol)" [ "$n_vol" -eq 16 ]
mkdir eight empty
for f in $(ls vol | grep '\.nii\.gz$' | head -n 8); do cp "vol/$f" eight/; done
n_png=$(ls pngs | grep -c '\.png$')
check "PNG slices in pngs/ (got $n_png)" [ "$n_png" -gt 2 ]

# ---- a. bad inputs: named, non-zero exit, nothing on stdout, no run directory ----------------------
# refused NAME STATUS PATTERN ARGS...
refused() {
  name=$1; want=$2; pattern=$3; shift 3
  expect_error "$name" "$want" "$pattern" --chkpt_dir ck --threads 1 "$@"
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
  check "$name: no run directory left" [ ! -e ck ]
}
d3="--spatial_dims 3 --embedding_size 12 --batch_size 2 --crop_size 16,16,8"
for p in "$simsiam" "$dino"; do
  use "$p"
  t=${p##*-}
  refused "${t}_pngs" 1 "error: pngs holds $n_png PNG slices (e.g. pngs/phantom_000_000.png) and no \*.nii / \*.nii.gz volumes: 3D pretraining (--spatial_dims 3) reads volumes .*; for slices use --spatial_dims 2" \
    --data_dir pngs $d3
  refused "${t}_vols2d" 1 "error: eight holds 8 NIfTI volumes (e.g. eight/phantom_000.nii.gz) and no \*.png slices: .*for volumes use --spatial_dims 3" \
    --data_dir eight --embedding_size 12 --batch_size 2 --crop_size 16
  refused "${t}_empty" 1 "error: image folder empty holds no \*.nii or \*.nii.gz volumes" \
    --data_dir empty $d3
  refused "${t}_missing" 1 "error: image folder nosuch: cannot open" --data_dir nosuch $d3
  # smaller than the crop on every axis: zero-padded to the crop (the 2D rule), where two crops
  # can only coincide (IoU 1): the pre-flight names each volume, its shape and the padding
  refused "${t}_small" 1 "error: pre-flight check: 2 of 2 files are bad: small/phantom_000.nii.gz: volume [0-9]*x[0-9]*x6, zero-padded to 16x16x8, has no pair of 16x16x8 crops (--crop_size) with an IoU in \[0.3, 0.6\]" \
    --data_dir small $d3
  refused "${t}_xy" 2 "--crop_size 16,12,8: the pretraining augmentations' rot90 turns the X-Y plane, so a 3D crop needs X = Y (Z may differ); use e.g. --crop_size 16,16,8" \
    --data_dir eight $d3 --crop_size 16,12,8
  refused "${t}_two" 2 "--crop_size 16,16: a 3D crop (--spatial_dims 3) takes one size for every axis or three" \
    --data_dir eight $d3 --crop_size 16,16
  refused "${t}_four" 2 "--crop_size: bad value '16,16,8,4'" --data_dir eight $d3 \
    --crop_size 16,16,8,4
  refused "${t}_few" 1 "error: eight has 8 volumes, fewer than one batch (--batch_size 9)" \
    --data_dir eight $d3 --batch_size 9
  # the memory of a step, estimated before anything is written (section 21b), over the limit
  refused "${t}_mem" 1 "error: a step needs an estimated [0-9]* MiB (the largest part: [a-z]*, [0-9]* MiB), over --max_memory_mb 50: lower --batch_size, --crop_size, --embedding_size or --cache_mb, or raise --max_memory_mb" \
    --data_dir eight $d3 --max_memory_mb 50
done
use "$dino"
refused d_lxy 2 "--local_crop_size 8,6,4: .*X = Y" --data_dir eight $d3 --n_local_crops 2 \
  --local_crop_size 8,6,4
refused d_l2 2 "--local_crop_size 8,8: a 3D crop" --data_dir eight $d3 --n_local_crops 2 \
  --local_crop_size 8,8

# ---- b. a volume smaller than the crop on one axis is zero-padded, as in 2D: it trains -----------
use "$simsiam"
rm -rf ck
run padz --data_dir eight $d3 --crop_size 16,16,20 --chkpt_dir ck --run_name p --low_resource_mode \
  --num_workers 0 --threads 1 --max_steps 1
check "Z 16 < crop 20: zero-padded, one step runs (got $rc; $(tail -n 1 padz.err))" [ "$rc" -eq 0 ]
check "... and saves its state" [ -s ck/p/state.safetensors ]

# ---- c. exact resume: interrupted (--max_steps, SIGTERM) + --resume == uninterrupted ------------
# 8 volumes, batch 2: 4 optimiser steps per epoch, 2 epochs.
tiny="--data_dir eight --spatial_dims 3 --chkpt_dir ck --run_name r --low_resource_mode
  --embedding_size 12 --batch_size 2 --crop_size 16,16,8 --n_epochs 2 --num_workers 0 --threads 1"
no_timing() { sed 's/, "images_per_s": [^,}]*//; s/, "seconds": [^,}]*//' "$1"; }
# st_len FILE: the length of a safetensors file's JSON header (u64 little-endian in front)
st_len() {
  od -An -tu1 -N8 "$1" | awk '{ v = 0; for (i = NF; i >= 1; --i) v = v * 256 + $i; print v }'
}
# st_data FILE: the tensor bytes after the header (which holds the flags as metadata)
st_data() { tail -c +$((8 + $(st_len "$1") + 1)) "$1"; }
# same_run NAME REF [tensors]: the run directory ck/r ends byte-identical to REF; with
# "tensors", state.safetensors only in its tensors (a resume with other per-invocation flags
# records them in the state's metadata)
same_run() {
  for f in checkpoint.safetensors checkpoint_epoch1.safetensors; do
    check "$1: $f identical to the uninterrupted run's" cmp -s "$2/$f" "ck/r/$f"
  done
  if [ "$3" = tensors ]; then
    st_data "$2/state.safetensors" >"$1.s1"
    st_data ck/r/state.safetensors >"$1.s2"
    check "$1: state.safetensors' tensors identical to the uninterrupted run's" \
      cmp -s "$1.s1" "$1.s2"
    check "$1: ... (and not empty)" [ -s "$1.s1" ]
  else
    check "$1: state.safetensors identical to the uninterrupted run's" \
      cmp -s "$2/state.safetensors" ck/r/state.safetensors
  fi
  no_timing "$2/metrics.jsonl" >"$1.m1"
  no_timing ck/r/metrics.jsonl >"$1.m2"
  check "$1: metrics.jsonl (every step's loss) identical" cmp -s "$1.m1" "$1.m2"
}
for p in "$simsiam" "$dino"; do
  use "$p"
  t=${p##*-}
  extra=""
  [ "$t" = dino ] && extra="--warmup_epochs 1 --n_local_crops 2 --local_crop_size 8,8,4"
  rm -rf ck
  run "${t}_full" $tiny $extra
  check "$t 3D: tiny run exits 0 (got $rc; $(tail -n 2 "${t}_full.err"))" [ "$rc" -eq 0 ]
  check "$t 3D: the log names the volumes and the 3D crop" \
    grep -q "^$t: 8 volumes (3D crops 16 x 16 x 8, X x Y x Z), 4 steps per epoch" "${t}_full.err"
  n_ep=$(grep -c epoch_loss ck/r/metrics.jsonl 2>/dev/null)
  check "$t 3D: 2 epoch lines in metrics.jsonl (got $n_ep)" [ "$n_ep" = 2 ]
  check "$t 3D: flags.json records spatial_dims 3, the 3D crop and cache_mb" \
    grep -q '"spatial_dims": 3, .*"crop_size": \[16, 16, 8\], .*"cache_mb": 1024, ' ck/r/flags.json
  [ "$t" = dino ] && check "dino 3D: flags.json records the 3D local crops" \
    grep -q '"n_local_crops": 2, "local_crop_size": \[8, 8, 4\]' ck/r/flags.json
  rm -rf "ref_$t"
  mv ck/r "ref_$t"
  # 3: inside the first epoch (a loader seek on resume); 4: at the epoch boundary. The resume
  # of the first one changes the per-invocation flags: loader threads and no volume cache.
  for k in 3 4; do
    rm -rf ck
    run "${t}_stop$k" $tiny $extra --max_steps $k
    check "$t 3D --max_steps $k exits 0 and says --resume continues (got $rc)" \
      grep -q -- "--resume continues" "${t}_stop$k.err"
    more=""
    [ "$k" = 3 ] && more="--num_workers 2 --cache_mb 0"
    run "${t}_resume$k" $tiny $extra --resume $more
    check "$t 3D --resume $more after $k steps exits 0 (got $rc; $(tail -n 1 "${t}_resume$k.err"))" \
      [ "$rc" -eq 0 ]
    check "$t 3D --resume after $k steps says so" grep -q "resuming ck/r at epoch" "${t}_resume$k.err"
    same_run "${t}3d_k$k" "ref_$t" $([ "$k" = 3 ] && echo tensors)
  done
done
# a resume with another Z of the crop is refused, naming it, the state left alone
use "$simsiam"
rm -rf ck
run z_stop $tiny --max_steps 2
cp ck/r/state.safetensors z_state
run z_other $(echo "$tiny" | sed 's/16,16,8/16,16,16/')  --resume
check "resume with another 3D --crop_size exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "... naming --crop_size and both shapes" \
  grep -q -- '--crop_size \[16, 16, 8\] (now \[16, 16, 16\])' z_other.err
check "... leaving the state alone" cmp -s z_state ck/r/state.safetensors
# SIGTERM mid-run (6 epochs of 4 steps; sent after step 2, so 22 steps, over a second, remain
# for it to land in): the state is saved at the step boundary; --resume finishes the run with
# the uninterrupted run's bytes
long="$(echo "$tiny" | sed 's/--n_epochs 2/--n_epochs 6/') --log_every 1"
rm -rf ck
run sig_full $long
check "6-epoch 3D run exits 0 (got $rc)" [ "$rc" -eq 0 ]
rm -rf ref_long
mv ck/r ref_long
"$bin" $long >sig.out 2>sig.err &
pid=$!
i=0
while [ $i -lt 2000 ] && ! grep -q "epoch 1 step 2/" sig.err 2>/dev/null; do
  sleep 0.01; i=$((i + 1))
done
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
check "SIGTERM stops the 3D run with status 143 (got $rc; $(tail -n 1 sig.err))" [ "$rc" -eq 143 ]
check "... saying --resume continues" grep -q "^interrupted after .*--resume continues" sig.err
run sig_resume $long --resume
check "... --resume exits 0 (got $rc)" [ "$rc" -eq 0 ]
same_run sig3d ref_long

# ---- d. the checkpoints: MONAI's 3D SwinTransformer under backbone.* ---------------------------
# st_entries FILE PREFIX: "name dtype shape" of FILE's tensors whose names start with PREFIX
# (stripped), sorted (the fixture's format: tests/reference/pretrain3d_names.py)
st_entries() {
  len=$(st_len "$1")
  head -c $((8 + len)) "$1" | tail -c "$len" |
    grep -o '"[^"]*":{"dtype":"[A-Z0-9]*","shape":\[[0-9,]*\]' |
    sed 's/^"\([^"]*\)":{"dtype":"\([A-Z0-9]*\)","shape":\[\([0-9,]*\)\]$/\1 \2 \3/' |
    grep "^$2" | sed "s/^$2//" | LC_ALL=C sort
}
for t in simsiam dino; do
  st_entries "ref_$t/checkpoint.safetensors" 'backbone\.' >"$t.backbone"
  n=$(wc -l <"$t.backbone")
  check "$t 3D checkpoint: backbone.* is MONAI's 3D SwinTransformer state dict, names, dtypes and shapes ($n tensors; $(diff "$names_fixture" "$t.backbone" | head -n 4 | tr '\n' ' '))" \
    cmp -s "$names_fixture" "$t.backbone"
  check "$t 3D checkpoint: the 3D patch embedding (Conv3d 12 x 1 x 2 x 2 x 2)" \
    grep -qx 'patch_embed\.proj\.weight F32 12,1,2,2,2' "$t.backbone"
done
st_entries ref_simsiam/checkpoint.safetensors '' >simsiam.all
other=$(grep -c -v -e '^backbone\.' -e '^projection_head\.layers\.' -e '^prediction_head\.layers\.' simsiam.all)
check "simsiam 3D checkpoint: backbone. / projection_head. / prediction_head. only ($other others)" \
  [ "$other" -eq 0 ]
st_entries ref_dino/checkpoint.safetensors 'student\.backbone\.' >dino.student
check "dino 3D checkpoint: the student's backbone (student.backbone.*) is the same 3D encoder" \
  cmp -s "$names_fixture" dino.student
st_entries ref_dino/checkpoint.safetensors 'head\.' >dino.head
check "dino 3D checkpoint: the teacher's head (head.last_layer.weight_v)" \
  grep -q '^last_layer\.weight_v ' dino.head

# the checkpoints load into ioupos-embed as 3D encoders (strict: every name and shape)
embed=$bdir/ioupos-embed
if [ -x "$embed" ]; then
  for t in simsiam dino; do
    "$embed" --chkpt_path "ref_$t/checkpoint.safetensors" --data_dir eight --spatial_dims 3 \
      --output "$t.npy" --embedding_size 12 --threads 1 >"$t.embed.out" 2>"$t.embed.err"
    check "ioupos-embed --spatial_dims 3 loads the $t 3D checkpoint (rc $?; $(tail -n 1 "$t.embed.err"))" \
      [ -s "$t.npy" ]
    check "... one 192-value feature (16 x C) per volume: shape (8, 192)" \
      grep -aq "'shape': (8, 192)" "$t.npy"
  done
else
  echo "$me: note: $embed not built; the ioupos-embed checks are skipped"
fi

# ---- e. SimSiam learns on the volumes (16 volumes, batch 8, 10 epochs of 2 steps) --------------
# Measured on this data (first epoch loss -> mean of the last three): lr 1.0 0.00 -> -0.29;
# seeds 1 and 2 -> -0.22 and -0.24; lr 0.5 -> -0.19 and -0.24. The bound, a fall of more than
# 0.08, holds with a margin of 2.5x or more across those seeds and rates; an untrained or
# collapsed run stays near 0 (its loss is -cos of near-constant outputs, which moves little),
# and a divergent one would end with a non-finite loss (exit 1).
rm -rf ck
run learn --data_dir vol --spatial_dims 3 --chkpt_dir ck --run_name learn --low_resource_mode \
  --embedding_size 12 --batch_size 8 --crop_size 16,16,8 --n_epochs 10 --base_lr 1.0 \
  --num_workers 1 --threads 1
check "3D learning run exits 0 (got $rc; $(tail -n 2 learn.err))" [ "$rc" -eq 0 ]
m=ck/learn/metrics.jsonl
grep epoch_loss "$m" | sed 's/.*"epoch_loss": \([^,}]*\).*/\1/' >losses
n_ep=$(wc -l <losses)
first=$(head -n 1 losses)
last3=$(tail -n 3 losses | awk '{ s += $1 } END { if (NR == 3) printf "%.5f", s / 3 }')
coll=$(grep epoch_loss "$m" | tail -n 1 | sed 's/.*"collapse": \([^,}]*\).*/\1/')
echo "$me: SimSiam 3D on phantom volumes: epoch loss $first -> $last3 (mean of the last 3) over $n_ep epochs, collapse $coll"
check "10 epoch lines (got $n_ep)" [ "$n_ep" -eq 10 ]
check "the loss falls by more than 0.08 (first epoch $first, mean of the last three $last3)" \
  awk -v a="$first" -v b="$last3" 'BEGIN { exit !(a != "" && b != "" && b + 0 < a - 0.08) }'
check "the collapse level stays below 0.9 (got $coll)" \
  awk -v c="$coll" 'BEGIN { exit !(c != "" && c + 0 >= 0 && c + 0 < 0.9) }'

finish
