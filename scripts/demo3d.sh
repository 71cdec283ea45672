#!/bin/sh
# make demo DIMS=3: the 3D path end to end on the phantom, in a few minutes on 2 cores.
#   1. ioupos-phantom writes synthetic abdominal CT cases with FLARE22 labels (NIfTI), split
#      2 train / 1 val / 1 test, and 8 unlabelled cases for pretraining;
#   2. ioupos-prep --spatial_dims 3 preprocesses them as the research code did (RAS, HU window
#      [-500, 500] -> [0, 1], foreground crop), at 4 mm in every direction so that a CPU
#      trains on them in minutes: volumes of about 80 x 60 x 40 voxels;
#   3. ioupos-simsiam --spatial_dims 3: a short SimSiam pretraining on IoU [0.3, 0.6] pairs of
#      32 x 32 x 16 crops of the unlabelled volumes (tiny model: C = 12);
#   4. ioupos-finetune --spatial_dims 3: a short 3D SwinUNETR fine-tuning on 32 x 32 x 32
#      crops from that encoder, and one from scratch with the same flags and seed; each scores
#      its best validation checkpoint on the test case by 3D sliding-window inference and
#      writes the predicted label volumes (.nii.gz, the input's affine);
#   5. the two per-organ 3D DSC tables side by side.
# At this size the two fine-tunings show the 3D pipeline working, not the effect of
# pretraining; the published-style 3D run needs 96 x 96 x 96 crops, C 48 and a GPU (README).
# Usage: sh scripts/demo3d.sh BUILD_DIR
set -eu
build=$1
out=$build/demo3d
mkdir -p "$out"
t0=$(date +%s)
C=12

echo "== 1. synthetic CT: 4 phantom cases with labels, split 2/1/1 -> $out/phantom;"
echo "      8 unlabelled cases for pretraining -> $out/phantom_ssl"
"$build/ioupos-phantom" --output_dir "$out/phantom" --n_cases 4 --seed 0 --split 2,1,1 2>&1 | tail -n 1
"$build/ioupos-phantom" --output_dir "$out/phantom_ssl" --n_cases 8 --seed 1 --no_labels 2>&1 |
  tail -n 1

echo "== 2. preprocessing into volumes at 4 x 4 x 4 mm -> $out/ssl, $out/ft"
coarse="--spatial_dims 3 --size_x 4 --size_y 4 --size_z 4 --pad_to 32 --num_workers 2"
rm -rf "$out/ssl" "$out/ft"
"$build/ioupos-prep" --data_dir "$out/phantom_ssl/images" --output_dir "$out/ssl" $coarse 2>&1 |
  tail -n 1
"$build/ioupos-prep" --data_dir "$out/phantom/images" --labels_dir "$out/phantom/labels" \
  --split_path "$out/phantom/split.json" --output_dir "$out/ft" $coarse 2>&1 | tail -n 1

echo "== 3. 3D SimSiam pretraining, IoU [0.3, 0.6], C $C, crops 32 x 32 x 16 -> $out/runs/simsiam"
rm -rf "$out/runs"
"$build/ioupos-simsiam" --spatial_dims 3 --data_dir "$out/ssl" --chkpt_dir "$out/runs" \
  --run_name simsiam --low_resource_mode --embedding_size $C --crop_size 32,32,16 \
  --batch_size 4 --n_epochs 12 --base_lr 0.5 --min_iou 0.3 --max_iou 0.6 --num_workers 1 \
  --log_every 1000 2>&1 | grep -e "done: mean loss" -e "error" || true
[ -s "$out/runs/simsiam/checkpoint.safetensors" ] || { echo "pretraining failed"; exit 1; }

ft="--spatial_dims 3 --data_dir $out/ft --split_path $out/phantom/split.json
  --chkpt_dir $out/runs --embedding_size $C --crop_size 32,32,32 --batch_size 2
  --n_epochs 30 --warmup_epochs 2 --base_lr 5e-3 --eval_every 10 --sw_batch_size 4
  --num_workers 1 --log_every 1000"
echo "== 4. 3D fine-tuning from the SimSiam encoder -> $out/runs/ft_simsiam"
"$build/ioupos-finetune" $ft --run_name ft_simsiam --predict_dir "$out/pred_simsiam" \
  --chkpt_path "$out/runs/simsiam/checkpoint.safetensors" >"$out/ft_simsiam.txt" \
  2>"$out/ft_simsiam.log" || { tail -n 3 "$out/ft_simsiam.log"; exit 1; }
grep -e "^loaded" -e "validation" "$out/ft_simsiam.log" | sed 's/^/   /'
echo "== 4. 3D fine-tuning from scratch -> $out/runs/ft_scratch"
"$build/ioupos-finetune" $ft --run_name ft_scratch --predict_dir "$out/pred_scratch" \
  >"$out/ft_scratch.txt" 2>"$out/ft_scratch.log" || { tail -n 3 "$out/ft_scratch.log"; exit 1; }
grep -e "validation" "$out/ft_scratch.log" | sed 's/^/   /'
echo "== 5. per-organ 3D DSC of the best validation checkpoints on the $(sed -n 's/^score \([a-z]*\) .*/\1/p' "$out/ft_simsiam.txt") split"
awk -f "$(dirname "$0")/dsc_columns.awk" "$out/ft_simsiam.txt" "$out/ft_scratch.txt"

echo
echo "outputs ($(($(date +%s) - t0)) s):"
echo "  volumes      $out/phantom $out/phantom_ssl (original), $out/ssl $out/ft (4 mm)"
echo "  pretraining  $out/runs/simsiam (checkpoint.safetensors: a 3D SwinTransformer under backbone.)"
echo "  fine-tuning  $out/runs/ft_simsiam $out/runs/ft_scratch (best.safetensors, results.json)"
echo "  predictions  $out/pred_simsiam $out/pred_scratch (label volumes, the input's affine)"
echo "  tables       $out/ft_simsiam.txt $out/ft_scratch.txt"
