#!/bin/sh
# tests/test_phantom_cli.sh — command-line checks for build/ioupos-phantom.
# Usage: sh tests/test_phantom_cli.sh BUILD_DIR   (run by tests/run.sh)
# Prints "FAIL: ..." for each failed check, then "test_phantom_cli: N checks passed, M failed";
# exits 1 if any check failed.

me=test_phantom_cli prog=ioupos-phantom
. "$(dirname "$0")/cli_lib.sh"

# A small grid keeps the test fast; the anatomy shrinks to fit it.
small="--size 48x40x16 --spacing 8,8,10"

# --help: exit 0, every flag and its default documented, the layout described.
run help --help
check "--help exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in --output_dir --n_cases --seed --size --spacing --noise --split --no_labels --help; do
  check "--help mentions $f" grep -q -- "$f" help.out
done
for d in "default 5" "default 0" "default 192x160x64" "default 2,2,2.5" "default 15" \
         "images/phantom_000.nii.gz" "labels/phantom_000.nii.gz" "split.json" "phantom.json" \
         "1 liver" "13 left kidney"; do
  check "--help mentions '$d'" grep -q -- "$d" help.out
done

# Layout.
run a --output_dir a $small --n_cases 3 --split 1,1,1
check "3 cases exit 0 (got $rc; $(cat a.err))" [ "$rc" -eq 0 ]
for i in 000 001 002; do
  check "a/images/phantom_$i.nii.gz is gzip" is_gz "a/images/phantom_$i.nii.gz"
  check "a/labels/phantom_$i.nii.gz is gzip" is_gz "a/labels/phantom_$i.nii.gz"
done
check "no fourth case" [ ! -e a/images/phantom_003.nii.gz ]
nimg=$(ls a/images | wc -l)
check "images/ holds 3 files (got $nimg)" [ "$nimg" -eq 3 ]
check "split.json lists train/val/test" \
  grep -q '^{"train": \["phantom_000"\], "val": \["phantom_001"\], "test": \["phantom_002"\]}$' a/split.json
check "phantom.json records the seed" grep -q '"seed": 0,' a/phantom.json
check "phantom.json records the size" grep -q '"size": \[48, 40, 16\]' a/phantom.json
check "phantom.json lists 3 cases" [ "$(grep -c '"name": "phantom_00' a/phantom.json)" -eq 3 ]
check "stdout says what was written" grep -q "^wrote 3 cases (48x40x16 at 8,8,10 mm, with labels) to a in" a.out
nprog=$(grep -c "^ioupos-phantom: case [1-3]/3 phantom_00[0-2] (seed [0-9]*) " a.err)
check "progress line per case on stderr (got $nprog)" [ "$nprog" -eq 3 ]

# Reproducibility: same seed, same bytes; case i does not depend on --n_cases; another seed differs.
run b --output_dir b $small --n_cases 2
check "second run exits 0 (got $rc)" [ "$rc" -eq 0 ]
for i in 000 001; do
  check "same seed: identical image $i" cmp -s "a/images/phantom_$i.nii.gz" "b/images/phantom_$i.nii.gz"
  check "same seed: identical labels $i" cmp -s "a/labels/phantom_$i.nii.gz" "b/labels/phantom_$i.nii.gz"
done
if cmp -s a/images/phantom_000.nii.gz a/images/phantom_001.nii.gz; then
  fail "cases 0 and 1 are identical"; else pass; fi
run c --output_dir=c $small --n_cases=1 --seed=7
check "seed 7 exits 0 (got $rc)" [ "$rc" -eq 0 ]
if cmp -s a/images/phantom_000.nii.gz c/images/phantom_000.nii.gz; then
  fail "another seed gives another image"; else pass; fi
if cmp -s a/labels/phantom_000.nii.gz c/labels/phantom_000.nii.gz; then
  fail "another seed gives other labels"; else pass; fi

# --no_labels, names widen past 1000 cases are not tested here (slow); default grid once.
run d --output_dir d $small --n_cases 1 --no_labels --noise 0
check "--no_labels exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "--no_labels writes the image" is_gz d/images/phantom_000.nii.gz
check "--no_labels writes no labels" [ ! -e d/labels ]
run e --output_dir e --n_cases 1
check "default grid exits 0 (got $rc; $(cat e.err))" [ "$rc" -eq 0 ]
check "default grid writes a gzip image" is_gz e/images/phantom_000.nii.gz
check "default grid is 192x160x64" grep -q "^wrote 1 case (192x160x64 at 2,2,2.5 mm" e.out

# Command-line errors: exit 2, message names the flag (and value), nothing created.
# refused NAME STATUS PATTERN ARGS...: the command, asked for out_NAME, fails with STATUS and
# PATTERN on stderr; no out_NAME, nothing on stdout.
refused() {
  name=$1; want=$2; pattern=$3; shift 3
  expect_refusal "$name" "$want" "$pattern" --output_dir "out_$name" "$@"
}
refused e_flag 2 "unknown flag '--bogus'" --bogus 1
refused e_n 2 "--n_cases: bad value 'abc'" --n_cases abc
refused e_n0 2 "--n_cases: bad value '0'" --n_cases 0
refused e_seed 2 "--seed: bad value '-1'" --seed -1
refused e_size 2 "--size: bad value '64x64'" --size 64x64
refused e_size0 2 "--size: bad value '0x64x64'" --size 0x64x64
refused e_size_big 2 "--size: bad value '5000x10x10'" --size 5000x10x10
refused e_sp 2 "--spacing: bad value '2,2'" --spacing 2,2
refused e_sp0 2 "--spacing: bad value '0,2,2'" --spacing 0,2,2
refused e_spnan 2 "--spacing: bad value 'nan,1,1'" --spacing nan,1,1
refused e_noise 2 "--noise: bad value '-3'" --noise=-3
refused e_split 2 "--split: 1,1,1 adds up to 3, not --n_cases 5" --split 1,1,1
refused e_split2 2 "--split: bad value '1,1'" --split 1,1 --n_cases 2
refused e_missing 2 "--seed: missing value" --seed
refused e_nolabv 2 "--no_labels takes no value" --no_labels=1
refused e_pos 2 "unexpected argument 'extra'" extra
run e_dir --n_cases 1
check "missing --output_dir exits 2 (got $rc)" [ "$rc" -eq 2 ]
check "missing --output_dir is named" grep -q -- "--output_dir is required" e_dir.err

# Library / file-system refusals: exit 1 with the reason.
run e_parent --output_dir no_such_parent/x $small --n_cases 1
check "missing parent exits 1 (got $rc)" [ "$rc" -eq 1 ]
check "missing parent is named" grep -q "no_such_parent/x: cannot create directory" e_parent.err
echo "a file" >plainfile
run e_file --output_dir plainfile $small --n_cases 1
check "output_dir that is a file exits 1 (got $rc)" [ "$rc" -eq 1 ]

# No temporary files left behind by the atomic writes.
stray=$(find . -name '*.tmp.*' | wc -l)
check "no stray *.tmp.* files ($stray found)" [ "$stray" -eq 0 ]

finish
