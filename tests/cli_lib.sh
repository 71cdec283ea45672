# tests/cli_lib.sh — the harness of the command-line tests (test_cli.sh, test_phantom_cli.sh,
# test_prep.sh). Sourced, not run (tests/run.sh runs only tests/test_*.sh):
#   me=test_cli prog=ioupos-crops
#   . "$(dirname "$0")/cli_lib.sh"
# with the script's own arguments ($1: the build folder, default build). It sets bin (the
# command's absolute path) and bdir (the build folder's), fails the script at once if bin is
# missing (`need` does the same for other programs), and moves into a fresh
# temporary folder that is removed on exit. The script ends with `finish`, which prints
# "$me: N checks passed, M failed" and exits 1 if any check failed.

build=${1:-build}
bin=$build/$prog
case $bin in /*) ;; *) bin=$(pwd)/$bin ;; esac

passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
check() { # check DESCRIPTION COMMAND...: passes when the command succeeds
  desc=$1; shift
  if "$@"; then pass; else fail "$desc"; fi
}
finish() {
  echo "$me: $passed checks passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

bdir=${bin%/*} # the build folder, absolute
# need NAME...: fails the script at once unless every $bdir/NAME is executable
need() {
  for b in "$@"; do
    if [ ! -x "$bdir/$b" ]; then
      echo "FAIL: $bdir/$b not found or not executable (run: make $build/$b)"
      echo "$me: 0 checks passed, 1 failed"
      exit 1
    fi
  done
}
need "$prog"
# use PATH: the command that run and expect_error call from now on (default: bin)
use() { bin=$1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/$me.XXXXXX") || exit 1
trap 'cd / && rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
cd "$tmp" || exit 1

# run NAME ARGS...: runs the command, stdout in NAME.out, stderr in NAME.err, status in $rc.
run() { run_prog "$bin" "$@"; }
# run_prog PROGRAM NAME ARGS...: the same with another program (bin unchanged)
run_prog() {
  prog_=$1; name=$2; shift 2
  "$prog_" "$@" >"$name.out" 2>"$name.err"
  rc=$?
}

# is_png FILE: the file starts with the 8-byte PNG signature \211 P N G \r \n \032 \n.
is_png() { [ -f "$1" ] && [ "$(od -An -tx1 -N8 "$1" | tr -d ' \n')" = 89504e470d0a1a0a ]; }
# is_gz FILE: the file starts with the gzip magic 1f 8b.
is_gz() { [ -f "$1" ] && [ "$(od -An -tx1 -N2 "$1" | tr -d ' \n')" = 1f8b ]; }

# expect_error NAME STATUS PATTERN ARGS...: the command exits STATUS and its stderr matches
# PATTERN (a grep pattern).
expect_error() {
  name=$1; want=$2; pattern=$3; shift 3
  run "$name" "$@"
  check "$name: exits $want (got $rc)" [ "$rc" -eq "$want" ]
  check "$name: stderr matches '$pattern' (got: $(cat "$name.err"))" grep -q -- "$pattern" "$name.err"
}

# expect_refusal NAME STATUS PATTERN OUTFLAG OUTPATH ARGS...: expect_error with OUTFLAG OUTPATH
# (the output asked for) before ARGS; afterwards OUTPATH does not exist and stdout is empty.
expect_refusal() {
  name=$1; want=$2; pattern=$3; outflag=$4; outpath=$5; shift 5
  rm -f "$outpath"
  expect_error "$name" "$want" "$pattern" "$outflag" "$outpath" "$@"
  check "$name: no output left ($outpath)" [ ! -e "$outpath" ]
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
}
