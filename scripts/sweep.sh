#!/bin/sh
# scripts/sweep.sh — the research table (thesis Table 4.2): SSL pretraining for a list of IoU
# intervals x pretraining seeds, each fine-tuned with a list of fine-tuning seeds, plus
# fine-tunings from scratch; one DSC per fine-tuning, then per row the mean +- SD.
#
#   sh scripts/sweep.sh --pretrain_data DIR --finetune_data DIR [flags]
#
# Flags:
#   --pretrain_data DIR   PNG slices for pretraining (ioupos-prep's output, labels not needed)
#   --finetune_data DIR   ioupos-prep's output with a split: DIR/train, DIR/val, DIR/test
#   --split_path FILE     the split file, checked by ioupos-finetune (optional)
#   --out DIR             where runs and tables go (default sweep)
#   --build DIR           the ioupos-* programs (default build)
#   --rows "R ..."        table rows, each 'scratch', 'random' (independent uniform crops, the
#                         research "Random crop [0, 1]") or an IoU interval 'MIN,MAX'
#                         (default "scratch 0,0 0.0001,0.3 0.3,0.6 0.6,1 random")
#   --pretrain_seeds "S ..."  (default "4294967295 381122412": the research script's default
#                         and the alternative its help names)
#   --finetune_seeds "S ..."  (default the same two)
#   --scratch_seeds "S ..."   seeds of the from-scratch fine-tunings (default four: the two
#                         above, 1 and 2, so that the row has as many runs as the others)
#   --method simsiam|dino pretraining method (default simsiam)
#   --pretrain_flags "..." extra flags for ioupos-simsiam / ioupos-dino (e.g. the size)
#   --finetune_flags "..." extra flags for ioupos-finetune; both lists also get
#                         --embedding_size and --crop_size from --embedding_size / --crop_size
#   --embedding_size C    (default 48), --crop_size N (default 96)
#   --quick               shrink it for a try-out: rows "scratch 0.3,0.6", one seed of each,
#                         C 12, crops 32, 3 pretraining and 6 fine-tuning epochs (flags given
#                         after --quick still apply)
#   --help
#
# Every run keeps its run directory under OUT/runs; a run already finished is not redone and an
# interrupted one is resumed (--resume), so the sweep can be stopped and started again. Output:
#   OUT/table.md    Markdown: | interval | mean +- SD | n | DSC1 | DSC2 | ... |
#   OUT/table.csv   interval,mean,sd,sd_sample,n,dsc_1,dsc_2,...
#   OUT/runs.csv    row,pretrain_seed,finetune_seed,split,metric,score,run_dir (one per run;
#                   row: scratch, random or iou_MIN_MAX)
#   OUT/plot.png    each run's DSC (dots) and each row's mean +- SD (bar), when the
#                   ioupos-sweep-plot program is built (make BUILD/ioupos-sweep-plot)
# The DSC is ioupos-finetune's reported score: the best validation checkpoint scored on the test
# split (or the validation score without one). SD is the population SD (ddof 0), as the
# thesis's; sd_sample (ddof 1) is beside it in the CSV. The runs of a row are not independent
# (pretraining seeds x fine-tuning seeds), as in the thesis.
set -eu

build=build
out=sweep
pdata=""
fdata=""
split=""
rows="scratch 0,0 0.0001,0.3 0.3,0.6 0.6,1 random"
pseeds="4294967295 381122412"
fseeds="4294967295 381122412"
sseeds="4294967295 381122412 1 2"
method=simsiam
pflags=""
fflags=""
C=48
crop=96

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "sweep.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --help) usage; exit 0 ;;
    --quick)
      rows="scratch 0.3,0.6"; pseeds=1; fseeds=1; sseeds=1; C=12; crop=32
      pflags="--low_resource_mode --batch_size 16 --n_epochs 3"
      fflags="--batch_size 4 --n_epochs 6 --warmup_epochs 1 --base_lr 5e-3 --eval_every 3"
      shift; continue ;;
  esac
  [ $# -ge 2 ] || die "$1: missing value (see --help)"
  case $1 in
    --build) build=$2 ;;
    --out) out=$2 ;;
    --pretrain_data) pdata=$2 ;;
    --finetune_data) fdata=$2 ;;
    --split_path) split=$2 ;;
    --rows) rows=$2 ;;
    --pretrain_seeds) pseeds=$2 ;;
    --finetune_seeds) fseeds=$2 ;;
    --scratch_seeds) sseeds=$2 ;;
    --method) method=$2 ;;
    --pretrain_flags) pflags=$2 ;;
    --finetune_flags) fflags=$2 ;;
    --embedding_size) C=$2 ;;
    --crop_size) crop=$2 ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift 2
done
[ -n "$fdata" ] || die "--finetune_data is required (see --help)"
case $method in simsiam|dino) ;; *) die "--method: expected simsiam or dino, got '$method'" ;; esac
for r in $rows; do
  case $r in
    scratch|random) ;;
    *,*) lo=${r%,*}; hi=${r#*,}
         awk -v a="$lo" -v b="$hi" 'BEGIN { exit !(a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && a + 0 <= b + 0 && b + 0 <= 1) }' ||
           die "--rows: '$r' is not an IoU interval MIN,MAX with 0 <= MIN <= MAX <= 1" ;;
    *) die "--rows: '$r' is not scratch, random or MIN,MAX" ;;
  esac
  [ "$r" = scratch ] || [ -n "$pdata" ] || die "--pretrain_data is required for row '$r'"
done
for p in "$build/ioupos-$method" "$build/ioupos-finetune"; do
  [ -x "$p" ] || die "$p not found (run: make)"
done
mkdir -p "$out/runs"
runs=$out/runs.csv
echo "row,pretrain_seed,finetune_seed,split,metric,score,run_dir" >"$runs"
tagof() { # a row's name in runs.csv and the run directories (no comma)
  case $1 in
    scratch|random) echo "$1" ;;
    *) echo "iou_${1%,*}_${1#*,}" ;;
  esac
}
label() { # the table's name of a row
  case $1 in
    scratch) echo "none (scratch)" ;;
    random) echo "Random crop [0, 1]" ;;
    *) echo "[${1%,*}, ${1#*,}]" ;;
  esac
}
# run_dir DIR CMD...: runs CMD (stdout and stderr into DIR.out / DIR.log), resuming the run
# directory DIR if it holds a state, else starting it afresh
run_dir() {
  d=$1; shift
  if [ -f "$d/state.safetensors" ]; then set -- "$@" --resume; else rm -rf "$d"; fi
  if ! "$@" >"$d.out" 2>"$d.log"; then
    echo "sweep.sh: failed: $*" >&2
    tail -n 3 "$d.log" >&2
    exit 1
  fi
}
finetune() { # finetune ROW PSEED FSEED RUN [--chkpt_path FILE]
  row=$1; ps=$2; fs=$3; name=$4; shift 4
  d=$out/runs/$name
  if [ -s "$d/results.json" ] && [ -s "$d.out" ] && grep -q '^score ' "$d.out"; then
    echo "   $name: done before"
  else
    run_dir "$d" "$build/ioupos-finetune" --data_dir "$fdata" ${split:+--split_path "$split"} \
      --chkpt_dir "$out/runs" --run_name "$name" --embedding_size "$C" --crop_size "$crop" \
      --seed "$fs" $fflags "$@"
  fi
  set -- $(sed -n 's/^score //p' "$d.out")
  echo "   $name: $1 $2 $3"
  echo "$(tagof "$row"),$ps,$fs,$1,$2,$3,$d" >>"$runs"
}

t0=$(date +%s)
for r in $rows; do
  echo "== $(label "$r")"
  if [ "$r" = scratch ]; then
    for fs in $sseeds; do finetune scratch - "$fs" "ft_scratch_s$fs"; done
    continue
  fi
  if [ "$r" = random ]; then iv="--min_iou 0 --max_iou 1 --pair_mode joint"; tag=random
  else iv="--min_iou ${r%,*} --max_iou ${r#*,}"; tag=$(tagof "$r"); fi
  for ps in $pseeds; do
    pname="pt_${method}_${tag}_s$ps"
    pd=$out/runs/$pname
    if [ -s "$pd/checkpoint.safetensors" ] && grep -q . "$pd.log" 2>/dev/null &&
       ! grep -q -e "--resume continues" -e "error" "$pd.log"; then
      echo "   $pname: done before"
    else
      run_dir "$pd" "$build/ioupos-$method" --data_dir "$pdata" --chkpt_dir "$out/runs" \
        --run_name "$pname" --embedding_size "$C" --crop_size "$crop" --seed "$ps" $iv $pflags
      echo "   $pname: $(grep 'done: mean loss' "$pd.log" | tail -n 1 | sed 's/,.*//')"
    fi
    for fs in $fseeds; do
      finetune "$r" "$ps" "$fs" "ft_${method}_${tag}_p${ps}_s$fs" \
        --chkpt_path "$pd/checkpoint.safetensors"
    done
  done
done

# ---- the tables (tab-separated rows first: name, mean, sd, sd_sample, n, DSCs) ---------------
tab=$(printf '\t')
for r in $rows; do
  awk -F, -v row="$(tagof "$r")" -v name="$(label "$r")" '
    NR > 1 && $1 == row { v[++n] = $6; s += $6 }
    END {
      if (n == 0) exit
      m = s / n; q = 0; for (i = 1; i <= n; ++i) q += (v[i] - m) ^ 2
      sd = sqrt(q / n); sds = n > 1 ? sqrt(q / (n - 1)) : 0
      printf "%s\t%.4f\t%.4f\t%.4f\t%d", name, m, sd, sds, n
      for (i = 1; i <= n; ++i) printf "\t%.4f", v[i]
      printf "\n"
    }' "$runs"
done >"$out/table.tsv"
maxn=$(awk -F"$tab" '{ if ($5 > m) m = $5 } END { print m + 0 }' "$out/table.tsv")
{
  printf "interval,mean,sd,sd_sample,n"
  i=1; while [ $i -le "$maxn" ]; do printf ",dsc_%d" $i; i=$((i + 1)); done
  printf "\n"
  awk -F"$tab" '{ printf "\"%s\"", $1; for (i = 2; i <= NF; ++i) printf ",%s", $i; printf "\n" }' \
    "$out/table.tsv"
} >"$out/table.csv"
{
  metric=$(awk -F, 'NR == 2 { print $5 " on the " $4 " split" }' "$runs")
  echo "Mean DSC per row ($metric; SD: population SD, ddof 0, as the thesis)."
  echo
  printf "| IoU interval | Mean ± SD | n |"
  i=1; while [ $i -le "$maxn" ]; do printf " DSC%d |" $i; i=$((i + 1)); done
  printf "\n|---|---|---|"
  i=1; while [ $i -le "$maxn" ]; do printf -- "---|"; i=$((i + 1)); done
  printf "\n"
  awk -F"$tab" -v maxn="$maxn" '{
    printf "| %s | %s ± %s | %s |", $1, $2, $3, $5
    for (i = 6; i <= NF; ++i) printf " %s |", $i
    for (i = NF - 5; i < maxn; ++i) printf " |"
    printf "\n" }' "$out/table.tsv"
} >"$out/table.md"
rm -f "$out/table.tsv"
if [ -x "$build/ioupos-sweep-plot" ]; then
  "$build/ioupos-sweep-plot" "$out/table.csv" "$out/plot.png" >/dev/null && plot=$out/plot.png
else
  plot="(none: make $build/ioupos-sweep-plot for the plot)"
fi
echo
cat "$out/table.md"
echo
echo "sweep done in $(($(date +%s) - t0)) s: $out/table.md $out/table.csv $out/runs.csv ${plot:-}"
