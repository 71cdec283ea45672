#!/bin/sh
# tests/test_cli.sh — command-line checks for build/ioupos-crops.
# Usage: sh tests/test_cli.sh BUILD_DIR   (run by tests/run.sh)
# Prints "FAIL: ..." for each failed check, then "test_cli: N checks passed, M failed";
# exits 1 if any check failed.

me=test_cli prog=ioupos-crops
. "$(dirname "$0")/cli_lib.sh"

# --help: exit 0, every flag and its default documented.
run help --help
check "--help exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in --input --output --min_iou --max_iou --crop_size --n_pairs --n_hist --pair_mode \
         --seed --help; do
  check "--help mentions $f" grep -q -- "$f" help.out
done
for d in "default crops.png" "default 0.3" "default 0.6" "default 96" "default 8" \
         "default 100000" "default anchored" "default 0"; do
  check "--help mentions '$d'" grep -q -- "$d" help.out
done

# Default run on the synthetic slice.
run a1 --output a1.png
check "default run exits 0 (got $rc; $(cat a1.err))" [ "$rc" -eq 0 ]
check "default run writes a PNG" is_png a1.png
check "default run reports violations: 0" grep -q "violations: 0$" a1.out
check "default run prints a histogram with bars" grep -q '^  \[0\.300, 0\.320) .*#' a1.out
check "default run reports valid pairs and first crops" \
  grep -q "valid pairs: [1-9][0-9]*, valid first crops: [1-9][0-9]*, intersection volume: [0-9]*\.\.[0-9]*" a1.out
check "default run is silent on stderr" [ ! -s a1.err ]
nbars=$(grep -c '^  \[' a1.out)
check "histogram has 15 bins (got $nbars)" [ "$nbars" -eq 15 ]
hsum=$(awk '/^  \[/ { s += $3 } END { print s + 0 }' a1.out)
check "histogram counts sum to 100000 (got $hsum)" [ "$hsum" -eq 100000 ]
npairs=$(grep -c '^pair ' a1.out)
check "default run lists 8 pairs (got $npairs)" [ "$npairs" -eq 8 ]
bad_iou=$(awk '/^pair / { v = $NF + 0; if (v < 0.3 || v > 0.6) n++ } END { print n + 0 }' a1.out)
check "listed pairs have IoU in [0.3, 0.6] ($bad_iou outside)" [ "$bad_iou" -eq 0 ]

# Reproducibility: same seed, same bytes; another seed, another picture.
run a2 --output a2.png
check "same seed gives identical PNGs" cmp -s a1.png a2.png
grep -v '^wrote ' a1.out >a1.txt
grep -v '^wrote ' a2.out >a2.txt
check "same seed gives identical text" cmp -s a1.txt a2.txt
run a3 --output=a3.png --seed=1
check "seed 1 exits 0 (got $rc)" [ "$rc" -eq 0 ]
if cmp -s a1.png a3.png; then fail "different seed gives a different PNG"; else pass; fi
run a4 --output a4.png --seed 0 --n_hist 10
check "the picture does not depend on --n_hist" cmp -s a1.png a4.png

# Other flag forms and modes.
run j1 --pair_mode joint --crop_size 64x96 --min_iou 0.5 --max_iou 0.9 --n_pairs 12 \
  --n_hist 20000 --seed 18446744073709551615 --output j1.png
check "joint mode, 64x96 crop exits 0 (got $rc; $(cat j1.err))" [ "$rc" -eq 0 ]
check "joint mode writes a PNG" is_png j1.png
check "joint mode reports violations: 0" grep -q "violations: 0$" j1.out
check "joint mode reports the 64x96 crop" grep -q "crop 64x96, IoU in \[0.5, 0.9\], pair mode joint" j1.out
run z1 --n_hist 0 --n_pairs 0 --output z1.png
check "--n_hist 0 --n_pairs 0 exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "--n_hist 0 prints mean IoU n/a" grep -q "mean IoU: n/a, violations: 0" z1.out

# A PNG input: the RGB 8-bit picture of the first run.
run in1 --input a1.png --output in1.png --crop_size 80 --seed 3
check "RGB PNG input exits 0 (got $rc; $(cat in1.err))" [ "$rc" -eq 0 ]
check "RGB PNG input writes a PNG" is_png in1.png
check "RGB PNG input: image shape 512x448 reported" grep -q "^image 512x448, crop 80x80" in1.out
check "RGB PNG input reports violations: 0" grep -q "violations: 0$" in1.out

# Command-line errors: exit 2, message names the flag (and value), no output file.
# refused NAME STATUS PATTERN ARGS...: the command, asked for NAME.png, fails with STATUS and
# PATTERN on stderr; no NAME.png, nothing on stdout.
refused() {
  name=$1; want=$2; pattern=$3; shift 3
  expect_refusal "$name" "$want" "$pattern" --output "$name.png" "$@"
}
refused e_flag 2 "unknown flag '--bogus'" --bogus 1
refused e_num 2 "--min_iou: bad value 'abc'" --min_iou abc
refused e_num2 2 "--n_pairs: bad value '-1'" --n_pairs -1
refused e_num3 2 "--crop_size: bad value '64x'" --crop_size 64x
refused e_num4 2 "--seed: bad value '-1'" --seed -1
refused e_range 2 "--max_iou: bad value '1.5'" --max_iou=1.5
refused e_missing 2 "--seed: missing value" --seed
refused e_mode 2 "--pair_mode: bad value 'both'" --pair_mode both
refused e_pos 2 "unexpected argument 'extra'" extra

# Library refusals: exit 1, "ioupos-crops: " + the library's reason, no output file.
refused e_reversed 1 "ioupos-crops: .*reversed" --min_iou 0.7 --max_iou 0.2
refused e_large 1 "ioupos-crops: .*crop 1000x1000 is larger than the image" --crop_size 1000
refused e_zero 1 "ioupos-crops: .*no pair of 300x300 crops in a 512x448 image" \
  --min_iou 0 --max_iou 0 --crop_size 300
echo "this is not a PNG file, just some text" >bad.png
refused e_corrupt 1 "ioupos-crops: bad.png: not a PNG file" --input bad.png
head -c 200 a1.png >truncated.png   # a real PNG signature, then nothing
refused e_trunc 1 "ioupos-crops: truncated.png: corrupt.*PNG" --input truncated.png
refused e_absent 1 "ioupos-crops: missing.png: cannot open" --input missing.png
refused e_outdir 1 "ioupos-crops: .*cannot create" --output no_such_dir/x.png

# [0, 0] is feasible when the image is at least twice the crop on some axis.
run zero_ok --min_iou 0 --max_iou 0 --crop_size 200 --output zero_ok.png --n_hist 1000
check "[0, 0] with 200x200 crops in 512x448 exits 0 (got $rc; $(cat zero_ok.err))" [ "$rc" -eq 0 ]
check "[0, 0] reports mean IoU 0" grep -q "mean IoU: 0.0000, violations: 0$" zero_ok.out

# No temporary files left behind by the atomic writes.
stray=$(find . -name '*.tmp.*' | wc -l)
check "no stray *.tmp.* files ($stray found)" [ "$stray" -eq 0 ]

finish
