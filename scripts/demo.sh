#!/bin/sh
# make demo: the data path end to end on a fresh machine, in well under a minute on 2 cores.
#   1. ioupos-phantom writes synthetic abdominal CT cases with FLARE22 labels (NIfTI), unless
#      DATA names a folder of real CT volumes (e.g. DATA=../shared/data/ct/unlabelled);
#   2. ioupos-prep preprocesses them as the research code did (RAS, 1 x 1 x 2.5 mm, HU window
#      [-500, 500] -> [0, 1], foreground crop, pad to 96) into axial PNG slices;
#   3. ioupos-crops draws IoU-constrained 96 x 96 crop pairs on a middle slice, for the
#      published best interval [0.3, 0.6] and for [0, 0] and [0.6, 1], and writes pictures.
# Usage: sh scripts/demo.sh BUILD_DIR [DATA_DIR]
set -eu
build=$1
data=${2:-}
out=$build/demo
mkdir -p "$out"

if [ -z "$data" ]; then
  echo "== 1. synthetic CT: 4 phantom cases with labels, split 2/1/1 -> $out/phantom"
  "$build/ioupos-phantom" --output_dir "$out/phantom" --n_cases 4 --seed 0 --split 2,1,1
  echo "== 2. preprocessing into PNG slices -> $out/slices"
  "$build/ioupos-prep" --data_dir "$out/phantom/images" --labels_dir "$out/phantom/labels" \
    --split_path "$out/phantom/split.json" --output_dir "$out/slices" --num_workers 2
  slices=$out/slices/train
else
  echo "== 1. real CT from $data"
  echo "== 2. preprocessing into PNG slices -> $out/slices_data"
  "$build/ioupos-prep" --data_dir "$data" --output_dir "$out/slices_data" --num_workers 2
  slices=$out/slices_data
fi

# the middle slice of the first case
first=$(ls "$slices" | grep '\.png$' | head -n 1)
case_name=${first%_*}
n=$(ls "$slices" | grep -c "^${case_name}_[0-9]*\.png$")
slice=$(ls "$slices" | grep "^${case_name}_[0-9]*\.png$" | sed -n "$((n / 2 + 1))p")
echo "== 3. IoU crop pairs on $slices/$slice"
for iv in "0.3 0.6" "0 0" "0.6 1"; do
  set -- $iv
  "$build/ioupos-crops" --input "$slices/$slice" --min_iou "$1" --max_iou "$2" --n_pairs 6 \
    --seed 0 --n_hist 20000 --output "$out/pairs_$1_$2.png" | tail -n 2
done
echo
echo "outputs:"
echo "  volumes   ${data:-$out/phantom}"
echo "  slices    $slices ($(ls "$slices" | grep -c '\.png$') PNGs)"
echo "  pictures  $out/pairs_0.3_0.6.png $out/pairs_0_0.png $out/pairs_0.6_1.png"
