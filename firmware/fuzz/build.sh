#!/usr/bin/env bash
# Compiles the libFuzzer harness firmware/fuzz/fuzz_link.c with firmware/frame.c and
# firmware/protocol.c under libFuzzer, AddressSanitizer and UBSan (any finding aborts).
#   usage: firmware/fuzz/build.sh OUT        (compiler: $FUZZ_CC, default clang)
# Exit status 3: clang or its libFuzzer runtime is missing (make setup installs both).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT" >&2
  exit 2
fi
out=$1
cc=${FUZZ_CC:-clang}
root=$(cd "$(dirname "$0")/../.." && pwd)
hint="run 'make setup' (it installs Debian's clang and libclang-rt-dev, libFuzzer's runtime)"

if ! command -v "$cc" >/dev/null 2>&1; then
  echo "fuzz: $cc not found: $hint" >&2
  exit 3
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
  > "$probe/probe.c"
if ! "$cc" -fsanitize=fuzzer "$probe/probe.c" -o "$probe/probe" >"$probe/log" 2>&1; then
  echo "fuzz: $cc cannot link libFuzzer ($(tail -n 1 "$probe/log")): $hint" >&2
  exit 3
fi

"$cc" -std=c11 -O2 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -fsanitize-coverage-ignorelist="$root/firmware/fuzz/coverage_ignore.txt" \
  -Wall -Wextra -Werror \
  -I"$root/firmware" \
  "$root/firmware/fuzz/fuzz_link.c" "$root/firmware/frame.c" "$root/firmware/protocol.c" \
  -o "$out"
