#!/bin/sh
# tests/test_finetune3d.sh — ioupos-finetune --spatial_dims 3.
# Evaluation (--n_epochs 0) of a MONAI 3D SwinUNETR state dict on NIfTI volumes laid out as
# ioupos-prep --spatial_dims 3 writes them (tests/fixtures/eval3d, written by
# tests/reference/eval3d_fixture.py with MONAI 1.6.1): the per-organ table, the predictions
# (MONAI's argmax off the fixture's near ties, the input's affine, uint8: checked by test_eval3d
# --check-prediction), flags.json; then the refusals (a bad --crop_size, labels of another shape,
# a truncated .nii.gz, a missing label, an empty folder, a checkpoint of another width), each
# naming the file or flag, with no prediction file and no run directory left.
# Training (--n_epochs > 0) on phantom volumes (ioupos-phantom + ioupos-prep --spatial_dims 3,
# C 6, crops 32^3): the loss falls, the run directory and the table; exact resume across an
# epoch boundary and inside an epoch; a 3D encoder checkpoint loaded, a 2D one refused; a
# non-square (x, y) crop trains without rot90; bad training data refused before anything is
# written; a diverging loss halts the run.
# Usage: sh tests/test_finetune3d.sh BUILD_DIR   (run by tests/run.sh; needs gzip)
# Prints "FAIL: ..." for each failed check, then "test_finetune3d: N checks passed, M failed";
# exits 1 if any check failed. One thread; about 50 s on 2 cores (20 s evaluation, 30 s training).

me=test_finetune3d prog=ioupos-finetune
root=$(pwd)
. "$(dirname "$0")/cli_lib.sh"

need test_eval3d ioupos-phantom ioupos-prep st_rename
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
refused e_crop 2 "--crop_size: bad value '32,32,48': must be a multiple of 32" --data_dir d \
  --spatial_dims 3 --n_epochs 0 --crop_size 32,32,48
refused e_crop2 2 "--crop_size: bad value '32,64': expected N or X,Y,Z" --data_dir d \
  --spatial_dims 3 --n_epochs 0 --crop_size 32,64
refused e_crop2d 2 "--crop_size 32,32,64: per-axis sizes need --spatial_dims 3" --data_dir d \
  --n_epochs 0 --crop_size 32,32,64
# the memory of the evaluation, estimated before anything is read into the model or written
refused e_mem 1 "error: the evaluation needs an estimated [0-9]* MiB (the largest part: [a-z]*, [0-9]* MiB), over --max_memory_mb 20: lower --sw_batch_size, --crop_size or --embedding_size, or raise --max_memory_mb" \
  --data_dir d $ev --max_memory_mb 20
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

# ---- training -----------------------------------------------------------------------------------
run h_help --help
check "--help says 3D trains (got $rc)" \
  sh -c "[ $rc -eq 0 ] && grep -q '3: NIfTI volumes, training and' h_help.out && grep -q -- '--batch_size counts volumes' h_help.out"
check "--help lists --cache_mb with its default" grep -q -- "--cache_mb MB .*" h_help.out
check "... (default 1024)" grep -q "(default 1024)" h_help.out
# 4 phantom cases split 2/1/1, prepared in 3D at 8 x 8 x 2.5 mm: about 41 x 32 x 16 voxels (x, y,
# z) each, so every volume is smaller than the 32^3 crop along z and is zero-padded there (the 2D
# rule, MONAI's SpatialPad), in training crops and in the sliding window alike.
"$bdir/ioupos-phantom" --output_dir ph --n_cases 4 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
  --split 2,1,1 >ph.out 2>ph.err &&
  "$bdir/ioupos-prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
    --output_dir v --size_x 8 --size_y 8 --size_z 2.5 --pad_to 32 --spatial_dims 3 \
    --num_workers 2 >prep.out 2>prep.err
check "phantom volumes prepared ($(tail -n 1 prep.err))" [ $? -eq 0 ]
# nz FILE: dim[3] (z) of a .nii.gz's header (little-endian int16 at byte 46)
nz() { gzip -dc "$1" | od -An -tu2 -j 46 -N 2 | tr -d ' '; }
check "the train volumes are thinner than the crop along z (got $(nz v/train/phantom_000.nii.gz))" \
  [ "$(nz v/train/phantom_000.nii.gz)" -lt 32 ]
# 2 train volumes, batch 1 x 2 crops: 2 steps per epoch; 2 epochs, validated after each
tr="--data_dir v --split_path ph/split.json --spatial_dims 3 --crop_size 32 --embedding_size 6
  --n_classes 14 --batch_size 1 --n_crops_per_ct 2 --n_epochs 2 --warmup_epochs 0 --base_lr 5e-3
  --eval_every 1 --sw_batch_size 2 --threads 1 --num_workers 0 --log_every 1 --chkpt_dir ck"
# eloss FILE N: epoch N's mean loss from a run's stderr
eloss() { sed -n "s/^epoch $2 done: mean loss //p" "$1"; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }

rm -rf ck/t
run t_full $tr --run_name t
check "t: 3D training exits 0 (got $rc; $(tail -n 1 t_full.err))" [ "$rc" -eq 0 ]
check "t: the log says 3D, 2 steps of 1 volume x 2 crops of 32 x 32 x 32" \
  grep -q "^fine-tuning, 3D: train 2 volumes, val 1 volumes, test 1 volumes; 2 steps per epoch of 1 volumes x 2 crops of 32 x 32 x 32 (x, y, z), 2 epochs" t_full.err
# The loss falls: epoch 2's mean below 0.97 x epoch 1's. Measured (seeds 1, 2, 4294967295):
# 0.93-0.95; without learning the two epochs differ by the crops only (about 1 %: the CE of the
# untrained model hardly depends on the crop), so 0.97 fails a run whose updates do nothing.
l1=$(eloss t_full.err 1)
l2=$(eloss t_full.err 2)
check "t: epoch 2's mean loss $l2 < 0.97 x epoch 1's $l1" lt "$l2" "$(awk -v a="$l1" 'BEGIN { print 0.97 * a }')"
check "t: 4 finite step losses in metrics.jsonl" \
  [ "$(grep -c '"loss": [0-9][0-9.e+-]*, "dice_loss"' ck/t/metrics.jsonl)" -eq 4 ]
check "t: 2 validations (the 3D evaluation) in metrics.jsonl" \
  [ "$(grep -c '"val_dsc": [0-9]' ck/t/metrics.jsonl)" -eq 2 ]
for f in flags.json metrics.jsonl checkpoint.safetensors best.safetensors state.safetensors \
         results.json; do
  check "t: ck/t/$f written" [ -s "ck/t/$f" ]
done
check "t: the table of the test split, best validation checkpoint" \
  grep -q "^test split, best validation checkpoint (epoch [12] of 2), 1 cases" t_full.out
check "t: ... per organ (liver's row)" grep -q "^  1  liver  " t_full.out
check "t: ... and the score line" grep -q "^score test dsc [0-9.]*$" t_full.out
check "t: flags.json records the crop and the cache" \
  grep -q '"crop_size": \[32, 32, 32\].*"cache_mb": 1024' ck/t/flags.json
check "t: best.safetensors is a whole 3D SwinUNETR (MONAI names)" \
  grep -aq 'swinViT.patch_embed.proj.weight.\{0,40\}"shape":\[6,1,2,2,2\]' ck/t/best.safetensors
mv ck/t ref

# exact resume: stopped after epoch 1 (its checkpoint, validation and state), then inside epoch 2
# (the loader resumes mid-epoch), then finished: byte-identical to the uninterrupted run
no_timing() { sed 's/, "volumes_per_s": [^,}]*//; s/, "seconds": [^,}]*//' "$1"; }
run r_1 $tr --run_name t --max_steps 2
check "r: --max_steps 2 exits 0 after epoch 1 (got $rc; $(tail -n 1 r_1.err))" \
  sh -c "[ $rc -eq 0 ] && grep -q '^epoch 1: validation' r_1.err && [ ! -s r_1.out ]"
check "r: ... with no results.json" [ ! -e ck/t/results.json ]
run r_2 $tr --run_name t --resume --max_steps 1
check "r: --resume --max_steps 1 exits 0 inside epoch 2 (got $rc; $(tail -n 1 r_2.err))" \
  sh -c "[ $rc -eq 0 ] && grep -q '^resuming ck/t at epoch 2 step 0/2' r_2.err && grep -q 'at epoch 2 step 1/2' r_2.err"
run r_3 $tr --run_name t --resume
check "r: the last --resume finishes (got $rc; $(tail -n 1 r_3.err))" \
  sh -c "[ $rc -eq 0 ] && grep -q '^resuming ck/t at epoch 2 step 1/2' r_3.err"
for f in checkpoint best state; do
  check "r: $f.safetensors identical to the uninterrupted run's" \
    cmp -s "ref/$f.safetensors" "ck/t/$f.safetensors"
done
check "r: results.json identical" cmp -s ref/results.json ck/t/results.json
check "r: the same table" cmp -s t_full.out r_3.out
no_timing ref/metrics.jsonl >r.m1
no_timing ck/t/metrics.jsonl >r.m2
check "r: metrics.jsonl identical (without timings)" cmp -s r.m1 r.m2

# loader threads and the volume cache change the speed only
run r_workers $tr --run_name w --num_workers 2 --cache_mb 0
check "r: --num_workers 2 --cache_mb 0 exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in checkpoint best; do
  check "r: ... the same $f.safetensors" cmp -s "ref/$f.safetensors" "ck/w/$f.safetensors"
done
check "r: ... and results.json" cmp -s ref/results.json ck/w/results.json

# the encoder from a 3D checkpoint: the trained encoder as a MONAI SwinTransformer state dict
# (bare names) and as an SSL checkpoint (backbone.*): all 126 encoder tensors loaded
"$bdir/st_rename" ref/best.safetensors enc3d.safetensors swinViT.= >/dev/null 2>&1
"$bdir/st_rename" ref/best.safetensors ssl3d.safetensors swinViT.=backbone. >/dev/null 2>&1
check "3D encoder checkpoints made" [ -s enc3d.safetensors ] && [ -s ssl3d.safetensors ]
run p_bare $tr --run_name p1 --chkpt_path enc3d.safetensors --max_steps 1
check "p: training from a 3D SwinTransformer state dict exits 0 (got $rc; $(tail -n 1 p_bare.err))" [ "$rc" -eq 0 ]
check "p: ... its 126 encoder tensors loaded, the decoder initialised" \
  grep -q "^loaded the encoder from enc3d.safetensors: 126 tensors under '' -> swinViT.\*, 0 other file tensors ignored; the decoder is initialised" p_bare.err
run p_ssl $tr --run_name p2 --chkpt_path ssl3d.safetensors --max_steps 1
check "p: from an SSL-style checkpoint (backbone.*) too (got $rc)" \
  sh -c "[ $rc -eq 0 ] && grep -q \"^loaded the encoder from ssl3d.safetensors: 126 tensors under 'backbone\\.'\" p_ssl.err"
# the models after that step: the states' model.* tensors, data only (the metadata differ: the
# flags name the checkpoint)
run p_scr $tr --run_name p0 --max_steps 1
check "p: one step from scratch (got $rc)" [ "$rc" -eq 0 ]
stdata() { # stdata STATE OUT: the bytes of the model.* tensors of a state file
  "$bdir/st_rename" "$1" "$2.st" model.= >/dev/null 2>&1 || return 1
  n=$(od -An -tu8 -N8 "$2.st" | tr -d ' ')
  tail -c +$((9 + n)) "$2.st" >"$2"
}
stdata ck/p0/state.safetensors m0 && stdata ck/p1/state.safetensors m1 &&
  stdata ck/p2/state.safetensors m2
check "p: the models of the three states extracted" [ -s m0 ] && [ -s m1 ] && [ -s m2 ]
check "p: ... the same model after a step from either encoder file" cmp -s m1 m2
check "p: ... another one than from scratch (the encoder was used)" sh -c '! cmp -s m0 m1'

# a crop with x != y: trained without rot90, a note says so
run n_rect $tr --run_name n --crop_size 64,32,32 --max_steps 1
check "n: --crop_size 64,32,32 trains (got $rc; $(tail -n 1 n_rect.err))" [ "$rc" -eq 0 ]
check "n: ... with a note on rot90" \
  grep -q "^note: no rot90 augmentation: the crop's x and y sides differ (64, 32)" n_rect.err
check "n: ... not for a square one" sh -c '! grep -q "no rot90" t_full.err'

# refusals of training runs: nothing on stdout, no run directory
trefused() { # trefused NAME STATUS PATTERN ARGS...
  name=$1; want=$2; pattern=$3; shift 3
  rm -rf ck/e
  expect_error "$name" "$want" "$pattern" $tr --run_name e "$@"
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
  check "$name: no run directory left" [ ! -e ck/e ]
}
trefused e_2d 1 "tests/fixtures/model/swin2d_weights.safetensors holds a 2D Swin encoder but the model is 3D: checkpoint tensor 'patch_embed.proj.weight' has shape \[6, 1, 2, 2\], the model expects \[6, 1, 2, 2, 2\]" \
  --chkpt_path "$root/tests/fixtures/model/swin2d_weights.safetensors"
trefused e_batch 1 "v/train has 2 volumes, fewer than one batch (--batch_size 3)" --batch_size 3
trefused e_memt 1 "error: a step with validation needs an estimated [0-9]* MiB (the largest part: [a-z]*, [0-9]* MiB), over --max_memory_mb 60: lower --batch_size, --n_crops_per_ct, --crop_size, --sw_batch_size or --embedding_size, or raise --max_memory_mb" \
  --max_memory_mb 60
trefused e_classes 1 "v/train/labels/phantom_00[01].nii.gz: label [0-9]* at voxel .* is outside \[0, 8)" \
  --n_classes 8
rm -rf w3 && cp -r v w3 && cp v/val/labels/phantom_002.nii.gz w3/train/labels/phantom_001.nii.gz
# phantom_001 is 39 voxels along x, phantom_002 41
trefused e_shape 1 "w3/train/phantom_001.nii.gz is 39 x 32 x 16 but its label w3/train/labels/phantom_001.nii.gz is 41 x 32 x 16" \
  --data_dir w3 --split_path ph/split.json
rm -rf w3 && cp -r v w3 && rm w3/train/labels/phantom_000.nii.gz
trefused e_nolabel 1 "image w3/train/phantom_000.nii.gz has no label" --data_dir w3
trefused e_research 1 "--metric research: the research per-slice Dice is 2D only" --metric research
# a diverging loss halts the run before any broken weights are written
rm -rf ck/e
expect_error e_nan 1 "the loss is .* at epoch [12] step [12]: stopping" $tr --run_name e --base_lr 1e6 \
  --eval_every 2
check "e_nan: no table and no results.json" [ ! -s e_nan.out ] && [ ! -e ck/e/results.json ]
finish
