#!/bin/sh
# make demo: the whole story end to end on a fresh machine, in about two minutes on 2 cores.
#   1. ioupos-phantom writes synthetic abdominal CT cases with FLARE22 labels (NIfTI), split
#      2 train / 1 val / 1 test, and 8 unlabelled cases for pretraining; unless DATA names a
#      folder of real CT volumes (e.g. DATA=../shared/data/ct/unlabelled);
#   2. ioupos-prep preprocesses them as the research code did (RAS, 1 x 1 x 2.5 mm, HU window
#      [-500, 500] -> [0, 1], foreground crop, pad to 96) into axial PNG slices;
#   3. ioupos-crops draws IoU-constrained 96 x 96 crop pairs on a middle slice, for the
#      published best interval [0.3, 0.6] and for [0, 0] and [0.6, 1], and writes pictures;
#   4. the training data again at 4 x 4 mm in-plane (slices of about 60 x 90 pixels, so that
#      CPU training takes seconds), crops of 32 x 32;
#   5. ioupos-simsiam: a short SimSiam pretraining on IoU [0.3, 0.6] pairs of the unlabelled
#      slices (tiny model: C = 12, small heads);
#   6. ioupos-finetune: a short SwinUNETR fine-tuning from that encoder, and one from scratch
#      with the same flags and seed; each scores its best validation checkpoint on the test case;
#   7. the two per-organ DSC tables side by side.
#   With DATA=<folder of CT volumes>, the pretraining runs on them; fine-tuning needs labels:
#   LABELS=<folder with CT + label volumes> (ioupos-prep's --labels_dir naming, e.g.
#   LABELS=../shared/data/ct/labelled), or label files in DATA itself; without labels the
#   fine-tuning is skipped (the script says so).
# At this size (a few hundred steps on 2 phantom cases) the two fine-tunings show the pipeline
# working, not the effect of pretraining: that needs the research scale (scripts/sweep.sh).
# Usage: sh scripts/demo.sh BUILD_DIR [DATA_DIR [LABELS_DIR]]
set -eu
build=$1
data=${2:-}
labels=${3:-}
out=$build/demo
mkdir -p "$out"
t0=$(date +%s)
C=12
CROP=32

if [ -z "$data" ]; then
  echo "== 1. synthetic CT: 4 phantom cases with labels, split 2/1/1 -> $out/phantom;"
  echo "      8 unlabelled cases for pretraining -> $out/phantom_ssl"
  "$build/ioupos-phantom" --output_dir "$out/phantom" --n_cases 4 --seed 0 --split 2,1,1
  "$build/ioupos-phantom" --output_dir "$out/phantom_ssl" --n_cases 8 --seed 1 --no_labels 2>/dev/null
  echo "== 2. preprocessing into PNG slices -> $out/slices"
  "$build/ioupos-prep" --data_dir "$out/phantom/images" --labels_dir "$out/phantom/labels" \
    --split_path "$out/phantom/split.json" --output_dir "$out/slices" --num_workers 2
  slices=$out/slices/train
else
  # one slice folder per data folder (ioupos-prep skips the cases it finished before)
  slices=$out/slices_$(basename "$data")
  echo "== 1. real CT from $data"
  echo "== 2. preprocessing into PNG slices -> $slices"
  # label files beside the images (…_label / …_seg) are not images
  if ls "$data" | grep -q -e '_label\.nii' -e '_seg\.nii'; then
    [ -n "$labels" ] || labels=$data
    "$build/ioupos-prep" --data_dir "$data" --labels_dir "$data" --output_dir "$slices" \
      --num_workers 2
  else
    "$build/ioupos-prep" --data_dir "$data" --output_dir "$slices" --num_workers 2
  fi
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

echo "== 4. training data at 4 x 4 mm in-plane (small slices for a CPU demo)"
coarse="--size_x 4 --size_y 4 --pad_to $CROP --num_workers 2"
rm -rf "$out/ssl4" "$out/ft4"
if [ -z "$data" ]; then
  "$build/ioupos-prep" --data_dir "$out/phantom_ssl/images" --output_dir "$out/ssl4" $coarse \
    2>&1 | tail -n 1
else
  if [ "$labels" = "$data" ]; then
    "$build/ioupos-prep" --data_dir "$data" --labels_dir "$data" --output_dir "$out/ssl4" $coarse \
      2>&1 | tail -n 1
  else
    "$build/ioupos-prep" --data_dir "$data" --output_dir "$out/ssl4" $coarse 2>&1 | tail -n 1
  fi
fi
split=""
if [ -z "$data" ]; then
  split=$out/phantom/split.json
  "$build/ioupos-prep" --data_dir "$out/phantom/images" --labels_dir "$out/phantom/labels" \
    --split_path "$split" --output_dir "$out/ft4" $coarse 2>&1 | tail -n 1
elif [ -n "$labels" ]; then
  # a split of the labelled cases in name order: the last is the test case when there are 3 or
  # more, the one before it the validation case, the others train
  cases=$(ls "$labels" | grep -e '\.nii$' -e '\.nii\.gz$' | grep -v -e '_label\.nii' -e '_seg\.nii' |
    sed 's/\.nii\.gz$//; s/\.nii$//; s/_0000$//; s/_ct$//' | sort)
  nc=$(echo "$cases" | grep -c .)
  if [ "$nc" -lt 2 ]; then
    echo "   $labels has $nc labelled case(s): fine-tuning needs at least 2 (train and val)"
    labels=""
  else
    ntest=0; [ "$nc" -ge 3 ] && ntest=1
    ntrain=$((nc - 1 - ntest))
    list() { echo "$cases" | sed -n "$1,$2p" | sed 's/.*/"&"/' | paste -sd, -; }
    split=$out/labels_split.json
    printf '{"train": [%s], "val": [%s], "test": [%s]}\n' "$(list 1 $ntrain)" \
      "$(list $((ntrain + 1)) $((ntrain + 1)))" \
      "$([ $ntest -eq 1 ] && list "$nc" "$nc")" >"$split"
    echo "   split of $labels: $(cat "$split")"
    "$build/ioupos-prep" --data_dir "$labels" --labels_dir "$labels" --split_path "$split" \
      --output_dir "$out/ft4" $coarse 2>&1 | tail -n 1
  fi
fi

echo "== 5. SimSiam pretraining, IoU [0.3, 0.6], C $C, crops $CROP x $CROP -> $out/runs/simsiam"
rm -rf "$out/runs"
"$build/ioupos-simsiam" --data_dir "$out/ssl4" --chkpt_dir "$out/runs" --run_name simsiam \
  --low_resource_mode --embedding_size $C --crop_size $CROP --batch_size 32 --n_epochs 5 \
  --base_lr 0.05 --min_iou 0.3 --max_iou 0.6 --num_workers 1 --log_every 1000 2>&1 |
  grep -e "done: mean loss" -e "error" || true
[ -s "$out/runs/simsiam/checkpoint.safetensors" ] || { echo "pretraining failed"; exit 1; }

if [ -z "$data" ] || [ -n "$labels" ]; then
  ft="--data_dir $out/ft4 --split_path $split --chkpt_dir $out/runs --embedding_size $C
    --crop_size $CROP --batch_size 8 --n_epochs 12 --warmup_epochs 1 --base_lr 5e-3
    --eval_every 4 --sw_batch_size 32 --num_workers 1 --log_every 1000"
  echo "== 6. fine-tuning from the SimSiam encoder -> $out/runs/ft_simsiam"
  "$build/ioupos-finetune" $ft --run_name ft_simsiam \
    --chkpt_path "$out/runs/simsiam/checkpoint.safetensors" >"$out/ft_simsiam.txt" 2>"$out/ft_simsiam.log" ||
    { tail -n 3 "$out/ft_simsiam.log"; exit 1; }
  grep -e "^loaded" -e "validation" "$out/ft_simsiam.log" | sed 's/^/   /'
  echo "== 6. fine-tuning from scratch -> $out/runs/ft_scratch"
  "$build/ioupos-finetune" $ft --run_name ft_scratch >"$out/ft_scratch.txt" 2>"$out/ft_scratch.log" ||
    { tail -n 3 "$out/ft_scratch.log"; exit 1; }
  grep -e "validation" "$out/ft_scratch.log" | sed 's/^/   /'
  echo "== 7. per-organ DSC of the best validation checkpoints on the $(sed -n 's/^score \([a-z]*\) .*/\1/p' "$out/ft_simsiam.txt") split"
  awk -f "$(dirname "$0")/dsc_columns.awk" "$out/ft_simsiam.txt" "$out/ft_scratch.txt"
else
  echo "== 6. fine-tuning skipped: $data has no labels (fine-tuning needs label volumes: pass"
  echo "      LABELS=<folder of CT + label volumes>, e.g. make demo DATA=$data LABELS=../shared/data/ct/labelled)"
fi

echo
echo "outputs ($(($(date +%s) - t0)) s):"
echo "  volumes      ${data:-$out/phantom $out/phantom_ssl}"
echo "  slices       $slices ($(ls "$slices" | grep -c '\.png$') PNGs)"
echo "  pictures     $out/pairs_0.3_0.6.png $out/pairs_0_0.png $out/pairs_0.6_1.png"
echo "  pretraining  $out/runs/simsiam (checkpoint.safetensors: encoder under backbone.)"
if [ -z "$data" ] || [ -n "$labels" ]; then
  echo "  fine-tuning  $out/runs/ft_simsiam $out/runs/ft_scratch (best.safetensors, results.json)"
  echo "  tables       $out/ft_simsiam.txt $out/ft_scratch.txt"
fi
