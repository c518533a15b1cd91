#!/usr/bin/env bash
# Coverage-guided fuzzing of the runner's input path (firmware/fuzz/fuzz_link.c) with libFuzzer,
# AddressSanitizer and UBSan. `make fuzz FUZZ_SECONDS=N` runs it.
#   usage: firmware/fuzz/fuzz.sh SECONDS [MAX_LEN]
#
# 1. builds the harness (firmware/fuzz/build.sh) in a fresh folder outside the repo;
# 2. replays every file of firmware/fuzz/corpus/ at full size (the regression inputs);
# 3. fuzzes a scratch copy of that corpus for SECONDS, inputs up to MAX_LEN bytes (default 512:
#    the time per input grows with its length; larger seeds are cut to MAX_LEN, the replay
#    covers them whole), so the repo's corpus never grows by itself;
# 4. prints one summary line: executions, exec/s, coverage (cov, ft), corpus, crashes.
# A crashing input is kept in that folder (the path is printed); exit status 1 on a crash,
# 3 when clang or libFuzzer is missing (make setup installs them), 2 on bad arguments.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || ! [[ ${2:-512} =~ ^[0-9]+$ ]]; then
  echo "usage: $0 SECONDS [MAX_LEN]" >&2
  exit 2
fi
seconds=$1
max_len=${2:-512}
root=$(cd "$(dirname "$0")/../.." && pwd)
seeds="$root/firmware/fuzz/corpus"
work=$(mktemp -d "${TMPDIR:-/tmp}/edgelm-fuzz.XXXXXX")
mkdir -p "$work/crashes" "$work/corpus"

"$root/firmware/fuzz/build.sh" "$work/fuzz_link" || { status=$?; rm -rf "$work"; exit "$status"; }

crashed() { # $1: what ran, $2: its log
  local found
  found=$(find "$work/crashes" -type f | sort | head -n 1)
  if [ -z "$found" ]; then # the replay keeps no copy: the input is the corpus file that ran last
    found=$(sed -n 's/^Running: //p' "$2" | tail -n 1)
  fi
  grep -E "invariant failed|ERROR: (AddressSanitizer|libFuzzer)|runtime error" "$2" | head -n 3 >&2 || true
  echo "fuzz: CRASH in the $1; log: $2" >&2
  if [ -n "$found" ]; then
    echo "fuzz: reproduce with: $work/fuzz_link $found" >&2
    case $found in
      "$seeds"/*) echo "fuzz: that input is in the corpus already: fix the bug it shows" >&2 ;;
      *) echo "fuzz: fix the bug, then add the input to the corpus so the replay keeps checking it:" \
              "cp $found $seeds/crash-<what-it-found>.bin, and commit it" >&2 ;;
    esac
  fi
  exit 1
}

# 2. The regression inputs, whole (no -max_len).
n_seeds=$(find "$seeds" -type f | wc -l)
if ! "$work/fuzz_link" -artifact_prefix="$work/crashes/" "$seeds"/* >"$work/replay.log" 2>&1; then
  crashed "replay of $seeds" "$work/replay.log"
fi

# 3. Fuzz a scratch copy.
cp "$seeds"/* "$work/corpus/"
echo "fuzz: $n_seeds seeds replayed; fuzzing for $seconds s (inputs up to $max_len bytes, log $work/fuzz.log)"
if ! "$work/fuzz_link" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1 \
     -artifact_prefix="$work/crashes/" "$work/corpus" >"$work/fuzz.log" 2>&1; then
  crashed "fuzzing" "$work/fuzz.log"
fi
if [ -n "$(find "$work/crashes" -type f)" ]; then crashed "fuzzing" "$work/fuzz.log"; fi

# 4. Summary, from libFuzzer's last status line and its final stats.
log="$work/fuzz.log"
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
status_line=$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -n 1 || true)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")
ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")
corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status_line")
corp_size=$(sed -n 's/.* corp: [0-9]*\/\([0-9]*[a-zA-Z]*\).*/\1/p' <<<"$status_line")
if [ -z "$execs" ] || [ -z "$cov" ]; then
  echo "fuzz: libFuzzer printed no final stats; log: $log" >&2
  exit 1
fi
echo "fuzz: ${seconds} s, ${execs} executions (${rate} exec/s), cov ${cov}, ft ${ft}," \
     "corpus ${n_seeds} seeds -> ${corp} inputs (${corp_size}), crashes 0"
rm -rf "$work"
