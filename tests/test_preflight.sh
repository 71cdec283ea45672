#!/bin/sh
# tests/test_preflight.sh — the training commands check their data before the first step and
# before anything is written (ioupos_dataset_check): every bad file is named at once, the run
# stops with exit status 1 and no run directory is created.
#   a. pretraining (ioupos-simsiam, ioupos-dino): two truncated PNGs are both named;
#   b. 24 x 24 slices with --crop_size 32: the message names the files' own size 24x24 and the
#      crop, not only the padded size;
#   c. --crop_size 1 with [0.3, 0.6] (no two 1x1 crops have such an IoU) is refused;
#   d. fine-tuning (ioupos-finetune): a validation label of the wrong size and a training label
#      with ids >= --n_classes are both named before the first step.
# Usage: sh tests/test_preflight.sh BUILD_DIR   (run by tests/run.sh)
# Prints "FAIL: ..." for each failed check, then "test_preflight: N checks passed, M failed";
# exits 1 if any check failed. About 5 s on 2 cores.

me=test_preflight prog=ioupos-simsiam
. "$(dirname "$0")/cli_lib.sh"

simsiam=$bin
need ioupos-dino ioupos-finetune ioupos-phantom ioupos-prep
dino=$bdir/ioupos-dino
ft=$bdir/ioupos-finetune

# ---- data: 32 pretraining slices (about 245 x 345), 4 slices of 24 x 24, a labelled split -----
"$bdir/ioupos-phantom" --output_dir ph --n_cases 2 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
  --no_labels >ph.out 2>ph.err &&
  "$bdir/ioupos-prep" --data_dir ph/images --output_dir data >prep.out 2>prep.err &&
  "$bdir/ioupos-phantom" --output_dir sph --n_cases 1 --seed 0 --size 96x80x8 --spacing 4,4,2.5 \
    --no_labels >sph.out 2>sph.err &&
  "$bdir/ioupos-prep" --data_dir sph/images --output_dir small --size_x 16 --size_y 16 \
    --size_z 5 --pad_to 24 >sprep.out 2>sprep.err &&
  "$bdir/ioupos-phantom" --output_dir fph --n_cases 4 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
    --split 2,1,1 >fph.out 2>fph.err &&
  "$bdir/ioupos-prep" --data_dir fph/images --labels_dir fph/labels --split_path fph/split.json \
    --output_dir fd --size_x 4 --size_y 4 --pad_to 32 >fprep.out 2>fprep.err
check "phantom data prepared ($(cat ph.err prep.err sprep.err fprep.err | tail -n 3))" [ $? -eq 0 ]
# size FILE: "W H" from the PNG's IHDR
size() { od -An -tu1 -j16 -N8 "$1" | awk '{ print $3 * 256 + $4, $7 * 256 + $8 }'; }
f0=$(ls small | grep '\.png$' | head -n 1)
check "the small slices are 24 x 24 (got $(size "small/$f0"))" [ "$(size "small/$f0")" = "24 24" ]

tiny="--chkpt_dir ck --run_name r --low_resource_mode --embedding_size 6 --batch_size 4
  --n_epochs 1 --warmup_epochs 0 --num_workers 0 --threads 1"
# refused NAME PATTERN ARGS...: exits 1, stderr matches PATTERN, nothing on stdout, no ck/
refused() {
  name=$1; pattern=$2; shift 2
  rm -rf ck
  expect_error "$name" 1 "$pattern" "$@"
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
  check "$name: no run directory created" [ ! -e ck ]
}

# ---- a. two truncated PNGs among 32: both named, at once ------------------------------------
cp -r data bad
b1=$(ls bad | grep '\.png$' | sed -n 3p)
b2=$(ls bad | grep '\.png$' | sed -n 20p)
head -c 300 "data/$b1" >"bad/$b1"
head -c 100 "data/$b2" >"bad/$b2"
for p in "$simsiam" "$dino"; do
  use "$p"
  t=${p##*-}
  refused "${t}_corrupt" "error: pre-flight check: 2 of 32 files are bad: " --data_dir bad \
    --crop_size 32 $tiny
  check "${t}_corrupt: names $b1 as a truncated PNG" \
    grep -q "bad/$b1: corrupt PNG (truncated: 300 bytes" "${t}_corrupt.err"
  check "${t}_corrupt: names $b2 as a truncated PNG" \
    grep -q "bad/$b2: corrupt PNG (truncated: 100 bytes" "${t}_corrupt.err"
  check "${t}_corrupt: stops before the first step (no step logged)" \
    sh -c "! grep -q 'steps per epoch' ${t}_corrupt.err"
done
# the good data still trains (a step and a state)
use "$simsiam"
rm -rf ck
run good --data_dir data --crop_size 32 $tiny --max_steps 1
check "good data: runs (got $rc; $(tail -n 1 good.err))" [ "$rc" -eq 0 ]
check "good data: the state is written" [ -s ck/r/state.safetensors ]

# ---- b. 24 x 24 slices, --crop_size 32: the files' own size and the crop ---------------------
refused small32 "pre-flight check: 4 of 4 files are bad: " --data_dir small --crop_size 32 $tiny
check "small32: names the 24x24 size, the padding and the 32x32 crop" \
  grep -q "small/$f0 (and 3 more images of 24x24): image 24x24, zero-padded to 32x32, has no pair of 32x32 crops (--crop_size) with an IoU in \[0.3, 0.6\] (--min_iou / --max_iou)" small32.err
check "small32: says which flags to change" grep -q "use a smaller --crop_size or another interval" small32.err
# crop 16 fits them
rm -rf ck
run small16 --data_dir small --crop_size 16 $tiny --max_steps 1
check "small16: runs (got $rc; $(tail -n 1 small16.err))" [ "$rc" -eq 0 ]

# ---- c. --crop_size 1 with [0.3, 0.6]: refused up front -------------------------------------
for p in "$simsiam" "$dino"; do
  use "$p"
  t=${p##*-}
  refused "${t}_crop1" "error: --crop_size 1 with --min_iou 0.3 / --max_iou 0.6: no two 1x1 crops have an IoU in \[0.3, 0.6\], in an image of any size (the nearest IoUs such crops can have are 0 and 1); change --min_iou / --max_iou or --crop_size" \
    --data_dir data --crop_size 1 --min_iou 0.3 --max_iou 0.6 $tiny
done
# DINO's local crops: an interval no 16 x 16 local crop can meet with a 32 x 32 crop
use "$dino"
refused d_local "error: --local_crop_size 16 with --local_min_iou 0.9 / --local_max_iou 1" \
  --data_dir data --crop_size 32 --n_local_crops 2 --local_crop_size 16 --local_min_iou 0.9 \
  --local_max_iou 1 $tiny

# ---- d. fine-tuning: a wrong-size validation label, a training label with ids >= 14 -----------
use "$ft"
cp -r fd fbad
v1=$(ls fbad/val/labels | grep '\.png$' | sed -n 3p)
t1=$(ls fbad/train/labels | grep '\.png$' | sed -n 5p)
cp "fbad/train/labels/$t1" "fbad/val/labels/$v1"  # a slice of another case: another size
cp "fbad/train/$t1" "fbad/train/labels/$t1"        # the CT slice as its label: ids up to 255
check "the copied label's size differs from its image's" \
  [ "$(size "fbad/val/labels/$v1")" != "$(size "fbad/val/$v1")" ]
ftc="--split_path fph/split.json --crop_size 32 --batch_size 4 --threads 1 --chkpt_dir ck
  --run_name e --embedding_size 6 --n_epochs 1 --warmup_epochs 0 --eval_every 1"
refused ft_bad "error: pre-flight check: 2 of 128 files are bad: " --data_dir fbad $ftc
check "ft_bad: names the wrong-size validation label and both sizes" \
  grep -q "label fbad/val/labels/$v1 is [0-9]*x[0-9]* but its image fbad/val/$v1 is [0-9]*x[0-9]*" ft_bad.err
check "ft_bad: names the training label with an id >= 14" \
  grep -q "fbad/train/labels/$t1: label [0-9]* at pixel ([0-9]*, [0-9]*) is outside \[0, 14) (--n_classes 14" ft_bad.err
check "ft_bad: stops before the first step" sh -c "! grep -q 'steps per epoch' ft_bad.err"
# evaluation only reads val and test: the validation label is still named
refused ft_eval "label fbad/val/labels/$v1 is " --data_dir fbad $ftc --n_epochs 0

finish
