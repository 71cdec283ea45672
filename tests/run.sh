#!/bin/sh
# Runs every test program given on the command line and every tests/test_*.sh script (with the
# build folder as $1), then prints one closing line "N passed, N failed" and exits non-zero if
# any failed. Each program prints its own checks and worst cases, and each test its seconds.
build=$1; shift
passed=0; failed=0; failures=""
for t in "$@" tests/test_*.sh; do
  [ -e "$t" ] || continue
  echo "== $t"
  t0=$(date +%s)
  case "$t" in
    *.sh) sh "$t" "$build" ;;
    *) "$t" ;;
  esac
  rc=$?
  echo "-- $t: $(( $(date +%s) - t0 )) s"
  if [ $rc -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures="$failures $t(rc=$rc)"; fi
done
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
