#!/bin/sh
# tests/test_sweep.sh — scripts/sweep.sh at toy size (--quick: rows scratch and [0.3, 0.6], one
# seed each, C 12, crops 32) on phantom data: the tables, the plot, a second call that redoes
# nothing, and its flag errors. About 15 s on 2 cores (7 s of CPU).
# Usage: sh tests/test_sweep.sh BUILD_DIR   (run by tests/run.sh from the repository root)

me=test_sweep prog=ioupos-finetune
sweep=$(pwd)/scripts/sweep.sh
. "$(dirname "$0")/cli_lib.sh"

need ioupos-phantom ioupos-prep ioupos-simsiam ioupos-sweep-plot

"$bdir/ioupos-phantom" --output_dir ph --n_cases 4 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
  --split 2,1,1 >ph.out 2>ph.err &&
  "$bdir/ioupos-prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
    --output_dir d --size_x 4 --size_y 4 --pad_to 32 --num_workers 2 >prep.out 2>prep.err
check "phantom data prepared ($(tail -n 1 prep.err))" [ $? -eq 0 ]
# the fine-tunings on the same cases at 8 x 8 x 5 mm (s: 8 slices a case of about 32 x 40, 2 sliding
# windows a slice against d's 12); the pretraining stays on d/train (s's slices are too small for
# two 32 x 32 crops with an IoU in [0.3, 0.6])
"$bdir/ioupos-prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
  --output_dir s --size_x 8 --size_y 8 --size_z 5 --pad_to 32 --num_workers 2 \
  >prep_s.out 2>prep_s.err
check "small phantom data prepared ($(tail -n 1 prep_s.err))" [ $? -eq 0 ]

# quick_sweep NAME: the quick sweep into out/, its output in NAME.out / NAME.err, status in rc
quick_sweep() {
  sh "$sweep" --build "$bdir" --quick --pretrain_data d/train --finetune_data s \
    --split_path ph/split.json --out out \
    --pretrain_flags "--low_resource_mode --batch_size 16 --n_epochs 2 --threads 1" \
    --finetune_flags "--batch_size 4 --n_epochs 4 --warmup_epochs 1 --base_lr 5e-3 --eval_every 2 --threads 1" \
    >"$1.out" 2>"$1.err"
  rc=$?
}

quick_sweep s1
check "sweep --quick exits 0 (got $rc; $(tail -n 2 s1.err))" [ "$rc" -eq 0 ]
for f in table.md table.csv runs.csv plot.png; do
  check "sweep wrote $f" [ -s "out/$f" ]
done
check "plot.png is a PNG" is_png out/plot.png
check "table.md has the header" grep -q '^| IoU interval | Mean ± SD | n | DSC1 |$' out/table.md
check "table.md has the scratch row" grep -q '^| none (scratch) | 0\.[0-9]* ± 0\.0000 | 1 | 0\.[0-9]* |$' out/table.md
check "table.md has the [0.3, 0.6] row" grep -q '^| \[0.3, 0.6\] | 0\.[0-9]* ± 0\.0000 | 1 | 0\.[0-9]* |$' out/table.md
check "table.csv has the header and 2 rows" [ "$(wc -l <out/table.csv)" -eq 3 ]
check "table.csv quotes the interval" grep -q '^"\[0.3, 0.6\]",0\.[0-9]*,0.0000,0.0000,1,0\.[0-9]*$' out/table.csv
check "runs.csv has one line per fine-tuning" [ "$(wc -l <out/runs.csv)" -eq 3 ]
check "runs.csv names the pretrained run" \
  grep -q '^iou_0.3_0.6,1,1,test,dsc,0\.[0-9]*,out/runs/ft_simsiam_iou_0.3_0.6_p1_s1$' out/runs.csv
# the table's DSC is the fine-tuning's reported score
s=$(sed -n 's/^score test dsc //p' out/runs/ft_scratch_s1.out)
check "the scratch DSC is the run's score ($s)" grep -q "^scratch,-,1,test,dsc,$s," out/runs.csv
check "the pretraining ran on IoU [0.3, 0.6]" \
  grep -q '"min_iou": 0.3, "max_iou": 0.6' out/runs/pt_simsiam_iou_0.3_0.6_s1/flags.json
check "the fine-tuning started from it" \
  grep -q "loaded the encoder from out/runs/pt_simsiam_iou_0.3_0.6_s1/checkpoint.safetensors" \
  out/runs/ft_simsiam_iou_0.3_0.6_p1_s1.log
cp out/table.md table1.md
quick_sweep s2
check "a second call exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "... redoes nothing" [ "$(grep -c 'done before' s2.out)" -eq 3 ]
check "... and gives the same table" cmp -s table1.md out/table.md

sh "$sweep" --bogus 1 >e1.out 2>e1.err
rc=$?
check "an unknown flag exits 2 (got $rc)" [ "$rc" -eq 2 ]
check "... naming it" grep -q "unknown flag '--bogus'" e1.err
sh "$sweep" --finetune_data d --rows "0.6,0.3" >e2.out 2>e2.err
check "a reversed interval is refused ($(cat e2.err))" grep -q "'0.6,0.3' is not an IoU interval" e2.err
sh "$sweep" --finetune_data d --rows "0.3,0.6" >e3.out 2>e3.err
check "pretraining rows need --pretrain_data ($(cat e3.err))" grep -q "pretrain_data is required" e3.err
sh "$sweep" --help >e4.out 2>e4.err
check "--help describes the flags" grep -q -- "--finetune_seeds" e4.out
finish
