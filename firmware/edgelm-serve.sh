#!/bin/sh
# edgelm-serve: the start script of edgelm-runner.service, written by edgelm into the board's data
# folder beside `current` (toolchain/deploy/service.py).
#   edgelm-serve DATA RUNNER-ARGUMENTS...
# Runs the runner of the current release, or of the previous one when the current one's files do not
# match its bundle.json (a power cut just after a flash, a damaged card): the unit never serves
# files it has not checked. A release is hashed once per boot: the marks are kept in the unit's
# RuntimeDirectory (emptied by a reboot; without one, every start hashes it again). The same checks
# as the board image's edgelm-service (firmware/image/edgelm-service.in).
DATA=$1
shift
RUN=${RUNTIME_DIRECTORY:-}
log() { echo "edgelm-serve: $*" >&2; }

is_id() {  # r- and 16 hex digits
  case $1 in r-*) ;; *) return 1 ;; esac
  h=${1#r-}
  [ ${#h} -eq 16 ] || return 1
  case $h in *[!0-9a-f]*) return 1 ;; esac
}

check_release() {  # $1 folder, $2 id: bundle.json lists the files the id is the hash of, each with its sha256
  files=$(tr -d ' \t\r\n' <"$1/bundle.json" 2>/dev/null | sed -n 's/.*"files":{\([^}]*\)}.*/\1/p')
  [ -n "$files" ] || return 1
  all=$(echo "$files" | tr ',' '\n' | wc -l)
  pairs=$(echo "$files" | tr ',' '\n' | sed -n 's/^"\([A-Za-z0-9._+-]*\)":"\([0-9a-f]\{64\}\)"$/\2  \1/p' |
    LC_ALL=C sort -k 2)
  [ "$(echo "$pairs" | wc -l)" -eq "$all" ] || return 1
  canon=$(echo "$pairs" | awk '{ printf "%s\"%s\":\"%s\"", (NR > 1 ? "," : ""), $2, $1 }')
  sum=$(printf '{%s}' "$canon" | sha256sum | cut -c 1-16)
  [ "r-$sum" = "$2" ] || return 1
  (cd "$1" && echo "$pairs" | sha256sum -c - >/dev/null 2>&1)
}

verified() {  # $1 release id, checked once per boot
  if [ -z "$RUN" ]; then check_release "$DATA/releases/$1" "$1"; return; fi
  [ -e "$RUN/ok-$1" ] && return 0
  [ -e "$RUN/bad-$1" ] && return 1
  if check_release "$DATA/releases/$1" "$1"; then touch "$RUN/ok-$1"; return 0; fi
  touch "$RUN/bad-$1"
  return 1
}

pick() {  # the release to serve: current if it verifies, else previous if it does
  for link in current previous; do
    rel=$(readlink "$DATA/$link" 2>/dev/null) || continue
    id=${rel#releases/}
    if [ "$rel" != "releases/$id" ] || ! is_id "$id"; then
      log "$link -> $rel is not a release"
      continue
    fi
    if verified "$id"; then
      [ "$link" = previous ] && log "serving the previous release $id instead"
      echo "$rel"
      return 0
    fi
    log "release $id ($link) does not match its bundle.json: refused"
  done
  return 1
}

rel=$(pick) || { log "no release in $DATA that verifies"; exit 1; }
cd "$DATA/$rel" || exit 1
log "serving ${rel#releases/}"
exec ./runner --model ./model.pte "$@"
