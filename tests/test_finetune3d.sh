#!/bin/sh
# tests/test_finetune3d.sh — ioupos-finetune --spatial_dims 3 --n_epochs 0: the evaluation of a
# MONAI 3D SwinUNETR state dict on NIfTI volumes laid out as ioupos-prep --spatial_dims 3 writes
# them (tests/fixtures/eval3d, written by tests/reference/eval3d_fixture.py with MONAI 1.6.1):
# the per-organ table, the predictions (MONAI's argmax off the fixture's near ties, the input's
# affine, uint8: checked by test_eval3d --check-prediction), flags.json; then the refusals (3D
# training, a bad --crop_size, labels of another shape, a truncated .nii.gz, a missing label, an
# empty folder, a checkpoint of another width), each naming the file or flag, with no prediction
# file and no run directory left.
# Usage: sh tests/test_finetune3d.sh BUILD_DIR   (run by tests/run.sh; needs gzip)
# Prints "FAIL: ..." for each failed check, then "test_finetune3d: N checks passed, M failed";
# exits 1 if any check failed. One thread; about 30 s on 2 cores.

me=test_finetune3d prog=ioupos-finetune
root=$(pwd)
. "$(dirname "$0")/cli_lib.sh"

need test_eval3d
fix=$root/tests/fixtures/eval3d
gzip -dc "$fix/weights.safetensors.gz" >w.safetensors
check "the MONAI state dict unpacks (gzip -dc)" [ -s w.safetensors ]

# d: val = case_a (36 x 34 x 66), test = case_b (20 x 44 x 40, smaller than the roi on x and z)
mkdir -p d/val/labels d/test/labels
cp "$fix/val/case_a.nii.gz" d/val/ && cp "$fix/val/labels/case_a.nii.gz" d/val/labels/ &&
  cp "$fix/val/case_b.nii.gz" d/test/ && cp "$fix/val/labels/case_b.nii.gz" d/test/labels/
check "data copied" [ $? -eq 0 ]
ev="--spatial_dims 3 --n_epochs 0 --chkpt_path w.safetensors --embedding_size 3 --n_classes 3
  --crop_size 32,32,64 --sw_batch_size 3 --sw_overlap 0.25 --threads 1 --chkpt_dir ck"
# organ FILE NAME: the DSC column of an organ's row of the printed table
organ() { awk -v n="$2" '$0 ~ "^ *[0-9]+  " n " " { print $(NF - 3) }' "$1"; }

# ---- the evaluation -----------------------------------------------------------------------------
printf '{"train": [], "val": ["case_a"], "test": ["case_b"]}' >split.json
run ok --data_dir d --split_path split.json $ev --run_name ok --predict_dir pred
check "evaluation exits 0 (got $rc; $(tail -n 1 ok.err))" [ "$rc" -eq 0 ]
check "the MONAI state dict loaded whole" grep -q "loaded a whole SwinUNETR from w.safetensors: 159 tensors" ok.err
check "the log says 3D, windows of 32 x 32 x 64" grep -q "3D: val 1 volumes, test 1 volumes, windows of 32 x 32 x 64" ok.err
check "the table is the test split's, 1 case" grep -q "^test split, w.safetensors, 1 cases" ok.out
# MONAI's DSCs of case_b (numpy, case_b_dsc.npy): 0.934250 (1), 0.744942 (2)
check "organ 1's DSC is MONAI's 0.9342 (got $(organ ok.out liver))" [ "$(organ ok.out liver)" = 0.9342 ]
check "organ 2's DSC is MONAI's 0.7449 (got $(organ ok.out 'right kidney'))" \
  [ "$(organ ok.out 'right kidney')" = 0.7449 ]
check "the score line: the mean over organs 0.839596" grep -q "^score test dsc 0.8395" ok.out
for p in val/case_a test/case_b; do
  c=${p#*/}
  check "pred/$p.nii.gz is a .nii.gz" is_gz "pred/$p.nii.gz"
  run_prog "$bdir/test_eval3d" chk_$c --check-prediction "$fix" "$c" "pred/$p.nii.gz" "d/$p.nii.gz"
  check "pred/$p.nii.gz: $(cat chk_$c.out)" [ "$rc" -eq 0 ]
done
check "no other file in pred" [ "$(find pred -type f | wc -l)" -eq 2 ]
check "results.json has both splits' cases" grep -q '"test": {"table": .*"case_b"' ck/ok/results.json
check "flags.json records the 3D roi" grep -q '"crop_size": \[32, 32, 64\]' ck/ok/flags.json
check "flags.json records spatial_dims 3" grep -q '"spatial_dims": 3' ck/ok/flags.json
# a check that can fail: the fixture's argmax of the other case is not this prediction
run_prog "$bdir/test_eval3d" chk_wrong --check-prediction "$fix" case_a "pred/val/case_a.nii.gz" \
  "$fix/val/case_a.nii.gz"
check "the prediction check passes on its own case (got $rc)" [ "$rc" -eq 0 ]
cp "$fix/val/labels/case_a.nii.gz" wrong.nii.gz
run_prog "$bdir/test_eval3d" chk_wrong --check-prediction "$fix" case_a wrong.nii.gz \
  "$fix/val/case_a.nii.gz"
check "the prediction check fails on the label volume (got $rc: $(cat chk_wrong.out))" [ "$rc" -ne 0 ]

# windows per model call change nothing
run sw1 --data_dir d $ev --run_name sw1 --predict_dir pred1 --sw_batch_size 1
check "--sw_batch_size 1 exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "... the same predictions" diff -r -q pred pred1
check "... the same results.json" cmp -s ck/ok/results.json ck/sw1/results.json

# ---- refusals -----------------------------------------------------------------------------------
refused() { # refused NAME STATUS PATTERN ARGS...: no run directory, no prediction, empty stdout
  name=$1; want=$2; pattern=$3; shift 3
  rm -rf ck/e pe
  expect_error "$name" "$want" "$pattern" --chkpt_dir ck --run_name e --predict_dir pe "$@"
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
  check "$name: no run directory left" [ ! -e ck/e ]
  check "$name: no prediction left" [ ! -e pe/val/case_a.nii.gz ] && [ ! -e pe/val/case_b.nii.gz ]
}
refused e_train 2 "--spatial_dims 3 with --n_epochs 5: 3D training is not yet available" \
  --data_dir d --spatial_dims 3 --n_epochs 5
refused e_crop 2 "--crop_size: bad value '32,32,48': must be a multiple of 32" --data_dir d \
  --spatial_dims 3 --n_epochs 0 --crop_size 32,32,48
refused e_crop2 2 "--crop_size: bad value '32,64': expected N or X,Y,Z" --data_dir d \
  --spatial_dims 3 --n_epochs 0 --crop_size 32,64
refused e_crop2d 2 "--crop_size 32,32,64: per-axis sizes need --spatial_dims 3" --data_dir d \
  --n_epochs 0 --crop_size 32,32,64
# bad data: b/val holds case_a and case_b, one spoiled at a time
mkbad() { rm -rf b && mkdir -p b/val/labels && cp "$fix/val/"*.nii.gz b/val/ &&
  cp "$fix/val/labels/"*.nii.gz b/val/labels/; }
mkbad && cp "$fix/val/labels/case_a.nii.gz" b/val/labels/case_b.nii.gz
refused e_shape 1 "b/val/case_b.nii.gz is 20 x 44 x 40 but its label b/val/labels/case_b.nii.gz is 36 x 34 x 66" \
  --data_dir b $ev
mkbad && head -c 20000 "$fix/val/case_b.nii.gz" >b/val/case_b.nii.gz
refused e_trunc 1 "b/val/case_b.nii.gz" --data_dir b $ev
mkbad && head -c 20000 "$fix/val/case_a.nii.gz" >b/val/case_a.nii.gz &&
  cp "$fix/val/labels/case_a.nii.gz" b/val/labels/case_b.nii.gz
refused e_two 1 "b/val/case_a.nii.gz.*and 1 more bad volume" --data_dir b $ev
check "e_two: both bad volumes on the log" grep -q "labels/case_b.nii.gz is 36 x 34 x 66" e_two.err
mkbad && rm b/val/labels/case_b.nii.gz
refused e_nolabel 1 "image b/val/case_b.nii.gz has no label: b/val/labels/case_b.nii.gz does not exist" \
  --data_dir b $ev
mkbad && rm b/val/*.nii.gz
refused e_empty 1 "image folder b/val holds no volumes" --data_dir b $ev
printf '{"val": ["case_a", "case_b"], "test": []}' >wrong.json
refused e_split 1 "wrong.json lists case 'case_b' under 'val' but d/val has no volume of it" \
  --data_dir d --split_path wrong.json $ev
cp d/test/case_b.nii.gz d/test/case_c.nii.gz && cp d/test/labels/case_b.nii.gz d/test/labels/case_c.nii.gz
refused e_split2 1 "d/test has a volume of case 'case_c', which split.json does not list under 'test'" \
  --data_dir d --split_path split.json $ev
mkbad
refused e_width 1 "w.safetensors.*swinViT.patch_embed.proj.weight" --data_dir b $ev --embedding_size 6
finish
