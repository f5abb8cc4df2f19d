#!/usr/bin/env bash
# buf breaking against a git ref (default HEAD~1): builds that ref's protos/ with today's third_party/
# (which is git-ignored, so the ref alone cannot build) and compares.
set -euo pipefail
cd "$(dirname "$0")/.."
ref="${1:-HEAD~1}"
if ! git cat-file -e "$ref:protos" 2>/dev/null; then
  echo "buf breaking: $ref has no protos/, nothing to compare"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$ref" protos buf.yaml | tar -x -C "$tmp"
cp -r third_party "$tmp/third_party"
# Both sides as single images (a workspace input would count as one image per module).
.venv/bin/buf build "$tmp" -o "$tmp/against.binpb"
.venv/bin/buf build . -o "$tmp/current.binpb"
.venv/bin/buf breaking "$tmp/current.binpb" --against "$tmp/against.binpb" --config buf.yaml
echo "buf breaking: no breaking change against $ref"
