#!/bin/sh
# tests/test_prep.sh — command-line checks for build/ioupos-prep on the real CT.
# Usage: sh tests/test_prep.sh BUILD_DIR   (run by tests/run.sh from the repository root)
# The CT comes from $IOUPOS_DATA (default ../shared/data); without it the data checks are
# skipped (saying so) and only the command-line checks run; with IOUPOS_REQUIRE_DATA=1 (CI) its
# absence is a failure.
# Prints "FAIL: ..." for each failed check, then "test_prep: N checks passed, M failed";
# exits 1 if any check failed. About 35 s on 2 cores (20 s of CPU), most of it the 448 slices of
# the three unlabelled CTs.

data=${IOUPOS_DATA:-../shared/data}
case $data in /*) ;; *) data=$(pwd)/$data ;; esac
me=test_prep prog=ioupos-prep
. "$(dirname "$0")/cli_lib.sh"

count() { find "$1" -maxdepth 1 -name "$2" -type f | wc -l | tr -d ' '; }

# ---- command line: exit 2, message names the flag --------------------------------------------
mkdir empty
run help --help
check "--help exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in --data_dir --output_dir --spatial_dims --a_min --a_max --size_x --size_y --size_z \
         --labels_dir --split_path --num_workers --image_suffix --label_suffix --pad_to; do
  check "--help mentions $f" grep -q -- "$f" help.out
done
expect_error e_flag 2 "unknown flag '--bogus'" --bogus 1 --data_dir empty --output_dir o
expect_error e_num 2 "--a_min: bad value 'abc'" --data_dir empty --output_dir o --a_min abc
expect_error e_num2 2 "--size_z: bad value '0'" --data_dir empty --output_dir o --size_z 0
expect_error e_num3 2 "--num_workers: bad value '2x'" --data_dir empty --output_dir o --num_workers 2x
expect_error e_dims 2 "--spatial_dims: bad value '4'" --data_dir empty --output_dir o --spatial_dims 4
expect_error e_win 2 "--a_max: bad value '-600'" --data_dir empty --output_dir o --a_max=-600
expect_error e_missing 2 "--output_dir: missing value" --data_dir empty --output_dir
expect_error e_req 2 "--data_dir is required" --output_dir o
expect_error e_pos 2 "unexpected argument 'extra'" extra
expect_error e_empty 1 "no .nii or .nii.gz files" --data_dir empty --output_dir o
expect_error e_nodir 1 "cannot open folder" --data_dir no_such_dir --output_dir o

if [ ! -d "$data/ct" ]; then
  if [ "${IOUPOS_REQUIRE_DATA:-0}" = 1 ]; then
    fail "real CT: $data/ct not found, and IOUPOS_REQUIRE_DATA=1 (CI): the real-CT checks must run (set IOUPOS_DATA)"
  else
    echo "SKIP real-CT checks of ioupos-prep: $data/ct not found (set IOUPOS_DATA)"
  fi
  finish
fi
ct=$data/ct

# ---- 2D, unlabelled, 2 workers ----------------------------------------------------------------
run u2 --data_dir "$ct/unlabelled" --output_dir u2 --num_workers 2
check "2D unlabelled exits 0 (got $rc; $(cat u2.err))" [ "$rc" -eq 0 ]
# slice counts from MONAI (tests/fixtures/prep/shapes.npy): 134, 122, 192
n=$(count u2 'totalseg_abdomen_pelvis_3mm_*.png')
check "totalseg_abdomen_pelvis_3mm: 134 slices (got $n)" [ "$n" -eq 134 ]
n=$(count u2 'cptac_pda_chest_abdomen_*.png')
check "cptac_pda_chest_abdomen: 122 slices (got $n)" [ "$n" -eq 122 ]
n=$(count u2 'tcga_ov_abdomen_*.png')
check "tcga_ov_abdomen: 192 slices (got $n)" [ "$n" -eq 192 ]
check "slice names are zero-padded to 3 digits" is_png u2/tcga_ov_abdomen_000.png
check "last slice is _191" is_png u2/tcga_ov_abdomen_191.png
check "no slice _192" [ ! -e u2/tcga_ov_abdomen_192.png ]
# PNG size: IHDR width = y extent (columns), height = x extent (rows); MONAI shape 463x445
wh=$(od -An -tu1 -j16 -N8 u2/tcga_ov_abdomen_100.png | tr -s ' ' | sed 's/^ //')
check "tcga slice is 445 wide, 463 high (IHDR bytes: $wh)" [ "$wh" = "0 0 1 189 0 0 1 207" ]
check "summary line reports 448 slices" grep -q "3 cases: 3 processed, 0 skipped (already done), 0 failed; 448 slices" u2.out
check "progress on stderr with an ETA" grep -q "cases 1/3 .*ETA" u2.err
check "a marker per case" [ "$(count u2/.done '*')" -eq 3 ]
check "marker records the settings" grep -q "^spacing 1 1 2.5$" u2/.done/tcga_ov_abdomen

# Re-run: everything skipped, nothing rewritten.
touch stamp
sleep 1
run u2b --data_dir "$ct/unlabelled" --output_dir u2 --num_workers 2
check "re-run exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "re-run skips all 3 cases" grep -q "3 cases: 0 processed, 3 skipped" u2b.out
check "re-run rewrites nothing" [ -z "$(find u2 -type f -newer stamp)" ]
# An interrupted case (marker missing) is redone.
rm u2/.done/totalseg_abdomen_pelvis_3mm u2/totalseg_abdomen_pelvis_3mm_050.png
run u2c --data_dir "$ct/unlabelled" --output_dir u2
check "a case without marker is redone (got $(cat u2c.out))" grep -q "3 cases: 1 processed, 2 skipped" u2c.out
check "its missing slice is back" is_png u2/totalseg_abdomen_pelvis_3mm_050.png
# Other settings with the same output folder: that case fails, naming the marker.
run u2d --data_dir "$ct/unlabelled" --output_dir u2 --a_min -400
check "changed settings: exit 1 (got $rc)" [ "$rc" -eq 1 ]
check "changed settings: the marker is named" grep -q "FAILED tcga_ov_abdomen: .*\.done/tcga_ov_abdomen was made with other settings" u2d.out

# ---- 2D labelled with a split file; images and labels share one folder --------------------------
cat >split.json <<'EOF'
{"train": ["totalseg_sm"], "val": ["totalseg_dicom"], "test": []}
EOF
run l2 --data_dir "$ct/labelled" --labels_dir "$ct/labelled" --split_path split.json --output_dir l2
check "2D labelled with split exits 0 (got $rc; $(cat l2.err))" [ "$rc" -eq 0 ]
n=$(count l2/train 'totalseg_sm_*.png'); m=$(count l2/train/labels 'totalseg_sm_*.png')
check "train: 36 image and 36 label slices (got $n, $m)" [ "$n" -eq 36 -a "$m" -eq 36 ]
n=$(count l2/val 'totalseg_dicom_*.png'); m=$(count l2/val/labels 'totalseg_dicom_*.png')
check "val: 16 image and 16 label slices (got $n, $m)" [ "$n" -eq 16 -a "$m" -eq 16 ]
check "label slices have the image's names" cmp -s "$(cd l2/train && ls totalseg_sm_*.png | tr '\n' ' ' >../../a.txt; echo a.txt)" \
  "$(cd l2/train/labels && ls totalseg_sm_*.png | tr '\n' ' ' >../../../b.txt; echo b.txt)"
check "label slice is a PNG" is_png l2/train/labels/totalseg_sm_020.png
check "nothing outside the split folders" [ "$(count l2 '*.png')" -eq 0 ]
cat >split2.json <<'EOF'
{"train": ["totalseg_sm", "nobody"]}
EOF
run l2b --data_dir "$ct/labelled" --labels_dir "$ct/labelled" --split_path split2.json --output_dir l2b
check "split case without image: exit 1 (got $rc)" [ "$rc" -eq 1 ]
check "split case without image is named" grep -q "case 'nobody' of split 'train' has no image" l2b.err
check "note for a case in no split" grep -q "case 'totalseg_dicom' .* is in no split" l2b.err
printf '{"train": ["a",]}' >bad.json
run l2c --data_dir "$ct/labelled" --labels_dir "$ct/labelled" --split_path bad.json --output_dir l2c
check "malformed split: exit 1 with line:column (got $rc; $(cat l2c.err))" grep -q "bad.json:1:16: expected a string" l2c.err

# ---- 3D labelled --------------------------------------------------------------------------------
run l3 --data_dir "$ct/labelled" --labels_dir "$ct/labelled" --output_dir l3 --spatial_dims 3
check "3D labelled exits 0 (got $rc; $(cat l3.err))" [ "$rc" -eq 0 ]
check "3D writes <case>.nii.gz" is_gz l3/totalseg_sm.nii.gz
check "3D writes labels/<case>.nii.gz" is_gz l3/labels/totalseg_dicom.nii.gz
check "3D summary" grep -q "2 cases: 2 processed, 0 skipped (already done), 0 failed; 2 volumes" l3.out

# ---- pairing errors name both sides ----------------------------------------------------------
mkdir img lab
ln -s "$ct/labelled/totalseg_sm_ct.nii.gz" img/a_0000.nii.gz
ln -s "$ct/labelled/totalseg_sm_ct.nii.gz" img/b_0000.nii.gz
ln -s "$ct/labelled/totalseg_sm_label.nii.gz" lab/a.nii.gz
ln -s "$ct/labelled/totalseg_sm_label.nii.gz" lab/c.nii.gz
run p1 --data_dir img --labels_dir lab --output_dir p1
check "unmatched pairs: exit 1 (got $rc)" [ "$rc" -eq 1 ]
check "image without label is named" grep -q "image img/b_0000.nii.gz has no label in lab" p1.err
check "label without image is named" grep -q "label lab/c.nii.gz (case 'c') has no image in img" p1.err
check "nothing processed on a pairing error" [ ! -d p1 ]
ln -s "$ct/labelled/totalseg_sm_ct.nii.gz" img/a.nii
run p2 --data_dir img --output_dir p2
check "two files, one case name: exit 1" [ "$rc" -eq 1 ]
check "both files named" grep -q "img/a.nii and img/a_0000.nii.gz both give case name 'a'" p2.err

# ---- corrupt cases are reported by name; the good ones finish ------------------------------------
# (the good cases are the two smallest, 16 and 36 slices: the 134-slice case costs 3 times more)
mkdir bad
ln -s "$ct/labelled/totalseg_dicom_ct.nii.gz" bad/good.nii.gz
ln -s "$ct/labelled/totalseg_sm_ct.nii.gz" bad/good2.nii.gz
head -c 100000 "$ct/labelled/totalseg_sm_ct.nii.gz" >bad/trunc.nii.gz
{ printf 'NOT A NIFTI'; head -c 2000 /dev/zero; } >bad/magic.nii
gzip -dc "$ct/labelled/totalseg_sm_ct.nii.gz" >bad/dt.nii
printf '\040\000' | dd of=bad/dt.nii bs=1 seek=70 conv=notrunc 2>/dev/null  # datatype 32 (complex64)
run b1 --data_dir bad --output_dir b1 --num_workers 2
check "corrupt cases: exit 1 (got $rc)" [ "$rc" -eq 1 ]
check "truncated gzip reported by name" grep -q "FAILED trunc: bad/trunc.nii.gz: truncated or corrupt gzip" b1.out
check "wrong magic reported by name" grep -q "FAILED magic: bad/magic.nii: not a NIfTI-1 file" b1.out
check "unsupported datatype reported by name" grep -q "FAILED dt: bad/dt.nii: unsupported datatype 32" b1.out
check "summary counts" grep -q "5 cases: 2 processed, 0 skipped (already done), 3 failed" b1.out
n=$(count b1 'good_*.png'); m=$(count b1 'good2_*.png')
check "good cases finish (16 and 36 slices, got $n and $m)" [ "$n" -eq 16 -a "$m" -eq 36 ]
check "no marker for failed cases" [ ! -e b1/.done/trunc -a ! -e b1/.done/magic ]
check "stderr says how many failed" grep -q "3 of 5 cases failed" b1.err

# ---- no temporary files anywhere ------------------------------------------------------------
stray=$(find . -name '*.tmp.*' | wc -l)
check "no stray *.tmp.* files ($stray found)" [ "$stray" -eq 0 ]

finish
