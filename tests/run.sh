#!/bin/sh
# Runs every test program given on the command line and every tests/test_*.sh script (with the
# build folder as $1), then prints one closing line "N passed, N failed" and exits non-zero if
# any failed. Each program prints its own checks and worst cases, and each test its seconds.
# IOUPOS_TEST_JOBS=N (default 1) runs N tests at a time (xargs -P; the tests share no files),
# the command scripts, the longest, first; each test's output is then printed whole, in the
# usual order, once all have finished.

# --one BUILD T: one test, its output and its seconds; the exit status is the test's
if [ "$1" = --one ]; then
  t0=$(date +%s)
  echo "== $3"
  case "$3" in
    *.sh) sh "$3" "$2" ;;
    *) "$3" ;;
  esac
  rc=$?
  echo "-- $3: $(( $(date +%s) - t0 )) s"
  exit $rc
fi

build=$1; shift
jobs=${IOUPOS_TEST_JOBS:-1}
case "$jobs" in
  '' | *[!0-9]* | 0) echo "run.sh: IOUPOS_TEST_JOBS must be a positive integer" >&2; exit 2 ;;
esac
out=$(mktemp -d "${TMPDIR:-/tmp}/ioupos_run.XXXXXX") || exit 2
trap 'rm -rf "$out"' EXIT
n=0
for t in "$@" tests/test_*.sh; do
  [ -e "$t" ] || continue
  n=$((n + 1))
  if [ "$jobs" -eq 1 ]; then
    sh "$0" --one "$build" "$t"
    echo $? >"$out/$n.rc"
  else
    case "$t" in *.sh) echo "$n $t" >>"$out/first" ;; *) echo "$n $t" >>"$out/then" ;; esac
  fi
done
if [ "$jobs" -gt 1 ]; then
  cat "$out/first" "$out/then" 2>/dev/null |
    RUNSH=$0 BUILD=$build OUT=$out xargs -P "$jobs" -n 2 sh -c \
      'sh "$RUNSH" --one "$BUILD" "$2" >"$OUT/$1" 2>&1; echo $? >"$OUT/$1.rc"' sh
fi

passed=0; failed=0; failures=""; k=0
for t in "$@" tests/test_*.sh; do
  [ -e "$t" ] || continue
  k=$((k + 1))
  [ "$jobs" -eq 1 ] || cat "$out/$k"
  rc=$(cat "$out/$k.rc" 2>/dev/null || echo 127)
  if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures="$failures $t(rc=$rc)"; fi
done
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
