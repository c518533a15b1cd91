#!/usr/bin/env bash
# Compiles tests/fuzz/sampler_harness.c with firmware/sampler.c, under AddressSanitizer and
# UBSan (any finding aborts), to the path given; extra arguments go to the compiler (e.g.
# -O3 -march=native as the runner is built, or -DEDGELM_TEST_SAMPLER_BUG for the runner's
# test-only sampler fault).
#   usage: tests/fuzz/build_sampler_harness.sh OUT [CFLAGS...]     (compiler: $CC, else gcc)
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT [CFLAGS...]" >&2
  exit 2
fi
out=$1
shift
cc=${CC:-gcc}
root=$(cd "$(dirname "$0")/../.." && pwd)
exec "$cc" -std=c11 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Werror \
  -I"$root/firmware" "$@" \
  "$root/tests/fuzz/sampler_harness.c" "$root/firmware/sampler.c" \
  -lm -o "$out"
