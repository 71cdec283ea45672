#!/bin/sh
# tests/test_flags.sh — every flag that the --help of build/ioupos-simsiam and build/ioupos-dino
# lists is parsed by that command, and the other method's own flags are refused.
# Usage: sh tests/test_flags.sh BUILD_DIR   (run by tests/run.sh)
#
# For each command the flags are read from its --help (lines "  --flag META  text", several flags
# on one line separated by ", "), and each is given, with a valid value when --help shows a
# metavariable, to a run whose --data_dir is missing: the flag parser must accept it, so the run
# fails after the parsing, at the data folder (exit 1), and never with "unknown flag" or the
# usage status 2. A flag that only the other command's --help lists must be refused as an unknown
# flag with exit 2 (SimSiam's --wd / --end_lr, DINO's --teacher_temp, --clip_grad, ...).
# Prints the flags it checks, "FAIL: ..." for each failed check, then
# "test_flags: N checks passed, M failed"; exits 1 if any check failed. About 1 s.

me=test_flags prog=ioupos-simsiam
. "$(dirname "$0")/cli_lib.sh"
need ioupos-dino
simsiam=$bin
dino=$bdir/ioupos-dino

# help_flags HELP_FILE: "FLAG META" per flag that the help text lists, "FLAG -" for a switch. A
# metavariable is the word after the flag when it is upper case, digits, '|' and ',' (X, N, DIR,
# N|H,W, 0|1); a ',' after the flag or its metavariable means another flag follows on the line.
help_flags() {
  awk '/^  --/ {
    i = 1
    while (i <= NF && $i ~ /^--/) {
      f = $i
      more = sub(/,$/, "", f)
      meta = "-"
      if (!more && i < NF && $(i + 1) ~ /^[A-Z0-9|,]+$/) {
        i++
        meta = $i
        more = sub(/,$/, "", meta)
      }
      print f, meta
      if (!more) break
      i++
    }
  }' "$1"
}

# value_for FLAG META: a value that the flag parser accepts and that passes the checks after it
# (with the other flags at their defaults); nothing for a switch; status 1 if none is known.
value_for() {
  case $1 in
    --data_dir) echo missing ;;
    --chkpt_dir) echo ck ;;
    --n_epochs) echo 20 ;; # above DINO's default warm-up of 10 epochs
    --pair_mode) echo joint ;;
    --device) echo cpu ;; # every build has the CPU
    *)
      case $2 in
        -) ;;
        X) echo 0.5 ;;       # rates, temperatures, momenta, IoU bounds in [0.3, 0.6] by default
        N) echo 2 ;;         # counts (SimSiam's --batch_size needs 2 at least)
        C) echo 24 ;;        # an embedding size the Swin heads divide
        'N|H,W'*) echo 32 ;; # a square crop (N|H,W|X,Y,Z: a cube in 3D)
        MB) echo 64 ;;       # --cache_mb
        HU) echo 100 ;;      # --a_min 100 is below the default --a_max 500, --a_max above -500
        MM) echo 1.5 ;;
        NAME) echo r1 ;;
        S) echo 7 ;;
        *'|'*) echo "${2%%|*}" ;; # 0|1, 2|3: the first choice
        *) return 1 ;;
      esac
      ;;
  esac
}

use "$simsiam"
run s_help --help
check "ioupos-simsiam --help exits 0 (got $rc)" [ "$rc" -eq 0 ]
help_flags s_help.out | grep -v '^--help ' >s_flags
use "$dino"
run d_help --help
check "ioupos-dino --help exits 0 (got $rc)" [ "$rc" -eq 0 ]
help_flags d_help.out | grep -v '^--help ' >d_flags

# The parsing of the help text found the flags (a guard against checking nothing).
ns=$(wc -l <s_flags)
nd=$(wc -l <d_flags)
check "ioupos-simsiam --help lists 30 flags or more (got $ns)" [ "$ns" -ge 30 ]
check "ioupos-dino --help lists 45 flags or more (got $nd)" [ "$nd" -ge 45 ]
for f in "--wd X" "--end_lr X" "--base_lr X" "--a_max HU" "--size_z MM" \
         "--crop_size N|H,W|X,Y,Z" "--cache_mb MB" "--resume -" "--use_amp -"; do
  check "ioupos-simsiam --help parsed as '$f'" grep -qxF -- "$f" s_flags
done
for f in "--teacher_temp X" "--lr X" "--base_lr X" "--local_max_iou X" "--norm_last_layer 0|1" \
         "--a_max HU" "--size_z MM" "--low_resource_mode -" "--local_crop_size N|H,W|X,Y,Z" \
         "--spatial_dims 2|3" "--cache_mb MB"; do
  check "ioupos-dino --help parsed as '$f'" grep -qxF -- "$f" d_flags
done

# not_unknown FLAG FILE: FILE does not hold the flag parser's message (drivers/cli.h) for FLAG.
not_unknown() { ! grep -qF -- "unknown flag '$1'" "$2"; }

# accepted PROG TAG FLAGS_FILE: each flag of the file, with its value, gets past the parsing.
accepted() {
  use "$1"
  echo "$2: accepts $(cut -d' ' -f1 "$3" | tr '\n' ' ')"
  while read -r f meta; do
    if ! v=$(value_for "$f" "$meta"); then
      fail "$2 $f: no test value for the metavariable '$meta' (extend value_for)"
      continue
    fi
    name=$2_ok_${f#--}
    run "$name" --data_dir missing --chkpt_dir ck $f $v
    check "$2 $f $v: not an unknown flag ($(cat "$name.err"))" not_unknown "$f" "$name.err"
    check "$2 $f $v: parsed, then exits 1 at the missing data folder, not 2 (got $rc; $(cat "$name.err"))" \
      [ "$rc" -eq 1 ]
    check "$2 $f $v: the error is the missing data folder ($(cat "$name.err"))" \
      grep -q "image folder missing" "$name.err"
  done <"$3"
}
accepted "$simsiam" ioupos-simsiam s_flags
accepted "$dino" ioupos-dino d_flags

# refused PROG TAG OWN_FLAGS OTHER_FLAGS: each flag that only the other command lists is an
# unknown flag here (exit 2), even with a valid value.
refused() {
  use "$1"
  cut -d' ' -f1 "$3" | sort >own
  cut -d' ' -f1 "$4" | sort | comm -13 own - >only_other
  check "$2: the other command has flags of its own ($(wc -l <only_other))" [ -s only_other ]
  echo "$2: refuses $(tr '\n' ' ' <only_other)"
  for f in $(cat only_other); do
    meta=$(grep -- "^$f " "$4" | head -n 1 | cut -d' ' -f2)
    v=$(value_for "$f" "$meta")
    name=$2_no_${f#--}
    run "$name" --data_dir missing --chkpt_dir ck $f $v
    check "$2 $f $v: exits 2 (got $rc)" [ "$rc" -eq 2 ]
    check "$2 $f $v: unknown flag ($(cat "$name.err"))" grep -qF -- "unknown flag '$f'" "$name.err"
  done
}
refused "$simsiam" ioupos-simsiam s_flags d_flags
refused "$dino" ioupos-dino d_flags s_flags
check "no run directory was made" [ ! -e ck ]

finish
