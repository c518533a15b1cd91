#!/usr/bin/env bash
# Compiles tests/fuzz/frame_harness.c with firmware/frame.c and firmware/protocol.c, under
# AddressSanitizer and UBSan (any finding aborts), to the path given.
#   usage: tests/fuzz/build_harness.sh OUT [CC]     (CC defaults to $CC, then gcc)
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT [CC]" >&2
  exit 2
fi
out=$1
cc=${2:-${CC:-gcc}}
root=$(cd "$(dirname "$0")/../.." && pwd)
exec "$cc" -std=c11 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Werror \
  -I"$root/firmware" \
  "$root/tests/fuzz/frame_harness.c" "$root/firmware/frame.c" "$root/firmware/protocol.c" \
  -o "$out"
