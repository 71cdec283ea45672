#!/bin/sh
# Runs every test program given on the command line and every tests/test_*.sh script (with the
# build folder as $1), then prints one closing line "N passed, N failed" and exits non-zero if
# any failed. Each program prints its own checks and worst cases, and each test its seconds.
# IOUPOS_TEST_JOBS=N (default 1; `make test` gives it the number of cores) runs N tests at a
# time (xargs -P; the tests share no files), the longest first (LONGEST below, then the other
# command scripts, then the programs), so that no slot idles at the end while one long test
# finishes alone; each test's output is printed whole as soon as it has finished, and the closing
# lines list the failures in the usual order. OpenMP threads wait passively
# (OMP_WAIT_POLICY=passive unless set): with several programs on the same cores, threads spinning
# for a descheduled one slow a test tenfold.
# IOUPOS_TEST_TIMEOUT=S (default 600; 0: none) is the time limit of each test, in seconds: a
# test still running then is stopped (TERM to it and its children, KILL 10 s later), named as
# hung, and counted failed. It needs `timeout` (coreutils); without it there is no limit.
# IOUPOS_TEST_SKIP="name ..." (file names, e.g. test_finetune.sh) leaves those tests out; the
# closing lines name them (make test-asan leaves out the longest command scripts).

# --one BUILD T: one test, its output and its seconds; the exit status is the test's (124 when
# it ran past the time limit)
if [ "$1" = --one ]; then
  t=$3
  limit=${IOUPOS_TEST_TIMEOUT:-600}
  t0=$(date +%s)
  echo "== $t"
  case "$t" in
    *.sh) set -- sh "$t" "$2" ;;
    *) set -- "$t" ;;
  esac
  if [ "$limit" -gt 0 ] && command -v timeout >/dev/null 2>&1; then
    # in the background, so that an interrupt (^C, TERM) reaches the test's whole process group
    # through timeout, which runs it in a group of its own
    timeout -k 10 "$limit" "$@" &
    pid=$!
    trap 'kill -TERM $pid 2>/dev/null' INT TERM HUP
    while :; do
      wait $pid
      rc=$?
      kill -0 $pid 2>/dev/null || break
    done
    trap - INT TERM HUP
    el=$(( $(date +%s) - t0 ))
    if [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ $el -ge "$limit" ]; }; then
      echo "TIMEOUT: $t still running after $limit s (IOUPOS_TEST_TIMEOUT): stopped, counted failed"
      rc=124
    fi
  else
    "$@"
    rc=$?
  fi
  echo "-- $t: $(( $(date +%s) - t0 )) s"
  exit $rc
fi

build=$1; shift
jobs=${IOUPOS_TEST_JOBS:-1}
case "$jobs" in
  '' | *[!0-9]* | 0) echo "run.sh: IOUPOS_TEST_JOBS must be a positive integer" >&2; exit 2 ;;
esac
case "${IOUPOS_TEST_TIMEOUT:-600}" in
  '' | *[!0-9]*) echo "run.sh: IOUPOS_TEST_TIMEOUT must be a number of seconds (0: no limit)" >&2; exit 2 ;;
esac
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
command -v timeout >/dev/null 2>&1 ||
  echo "run.sh: no 'timeout' command (coreutils): the tests run without a time limit"
out=$(mktemp -d "${TMPDIR:-/tmp}/ioupos_run.XXXXXX") || exit 2
trap 'rm -rf "$out"' EXIT
trap 'exit 130' INT TERM HUP
skip() { # skip T: true when IOUPOS_TEST_SKIP names T's file
  case " ${IOUPOS_TEST_SKIP:-} " in *" ${1##*/} "*) return 0 ;; esac
  return 1
}
# The tests of 10 s or more in `make test` or `make test-asan` on 2 cores (two at a time), the
# longest first: with jobs > 1 they start in this order (longest processing time first), the
# rest after them. (make test: test_parallel.sh 70 s ... test_sweep.sh 10 s; test-asan, which
# leaves the command runs out: test_prep.sh 57 s, test_cuda_ops 40, test_local_crop 31,
# test_nifti and test_phantom 21, test_ckpt_finite.sh 19, test_rundir.sh 17, test_threads 12.)
LONGEST="test_parallel.sh test_finetune3d.sh test_finetune.sh test_pretrain.sh test_pretrain3d.sh
  test_prep.sh test_local_crop test_cuda_ops test_device.sh test_eval3d test_nifti test_phantom
  test_ckpt_finite.sh test_rundir.sh test_flags.sh test_sampler test_threads test_sweep.sh"
longest=" $(echo $LONGEST) " # on one line
n=0
for t in "$@" tests/test_*.sh; do
  [ -e "$t" ] || continue
  skip "$t" && continue
  n=$((n + 1))
  case "$longest" in
    *" ${t##*/} "*) echo "$n $t" >>"$out/long" ;;
    *) case "$t" in *.sh) echo "$n $t" >>"$out/first" ;; *) echo "$n $t" >>"$out/then" ;; esac ;;
  esac
done
# the long ones in LONGEST's order
for l in $LONGEST; do
  grep " \(.*/\)\{0,1\}$l\$" "$out/long" 2>/dev/null
done >"$out/long_sorted"
if [ "$jobs" -gt 1 ]; then
  show() { # the output of each test that has finished and is not shown yet
    k=0
    while [ $k -lt $n ]; do
      k=$((k + 1))
      if [ -f "$out/$k.rc" ] && [ ! -f "$out/$k.shown" ]; then
        cat "$out/$k"
        : >"$out/$k.shown"
      fi
    done
  }
  (while [ -d "$out" ] && [ ! -f "$out/all_run" ]; do show; sleep 1; done) &
  shower=$!
  cat "$out/long_sorted" "$out/first" "$out/then" 2>/dev/null |
    RUNSH=$0 BUILD=$build OUT=$out xargs -P "$jobs" -n 2 sh -c \
      'sh "$RUNSH" --one "$BUILD" "$2" >"$OUT/$1" 2>&1; echo $? >"$OUT/$1.tmp" && mv "$OUT/$1.tmp" "$OUT/$1.rc"' sh
  : >"$out/all_run"
  wait $shower
  show
fi

passed=0; failed=0; failures=""; skipped=""; k=0
for t in "$@" tests/test_*.sh; do
  if skip "$t"; then # (make does not build what only the tests left out need)
    skipped="$skipped ${t##*/}"
    continue
  fi
  [ -e "$t" ] || continue
  k=$((k + 1))
  if [ "$jobs" -eq 1 ]; then
    sh "$0" --one "$build" "$t"
    echo $? >"$out/$k.rc"
  fi
  rc=$(cat "$out/$k.rc" 2>/dev/null || echo 127)
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    if [ "$rc" -eq 124 ]; then failures="$failures $t(timed out)"; else failures="$failures $t(rc=$rc)"; fi
  fi
done
[ -n "$skipped" ] && echo "left out (IOUPOS_TEST_SKIP):$skipped"
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
