#!/usr/bin/env bash
# Checks deploy/systemd/sparsewatch.service offline (no running systemd needed): the unit
# parses and its ExecStart resolves (`systemd-analyze verify`, which must print nothing), and
# its hardening keeps the exposure score at or below a threshold (`systemd-analyze security
# --offline=true --threshold=…`). Needs systemd-analyze (package systemd).
#
# Usage: deploy/systemd/check.sh [BINARY] [THRESHOLD]
#   BINARY     the sparsewatch binary ExecStart should name (default: target/release/sparsewatch);
#              the unit names /usr/bin/sparsewatch, which is not installed on a build machine,
#              so a copy of the unit pointing at BINARY is checked.
#   THRESHOLD  highest acceptable exposure level in tenths, as systemd-analyze takes it (default
#              15, i.e. 1.5; the unit scored 1.1 "OK" on 2026-11-30 with systemd 252).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${1:-$root/target/release/sparsewatch}")
threshold=${2:-15}
[ -x "$bin" ] || { echo "no executable at $bin (build it first)" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#^ExecStart=/usr/bin/sparsewatch #ExecStart=$bin #" \
  "$root/deploy/systemd/sparsewatch.service" >"$tmp/sparsewatch.service"
grep -q "^ExecStart=$bin " "$tmp/sparsewatch.service" \
  || { echo "ExecStart in the unit no longer starts with /usr/bin/sparsewatch" >&2; exit 1; }

echo "== systemd-analyze verify"
out=$(cd "$tmp" && systemd-analyze verify ./sparsewatch.service 2>&1) || {
  echo "$out" >&2
  exit 1
}
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "verify printed warnings" >&2
  exit 1
fi
echo "ok"

echo "== systemd-analyze security --offline=true --threshold=$threshold"
(cd "$tmp" && systemd-analyze security --offline=true --threshold="$threshold" \
  ./sparsewatch.service) | grep -E '^✗|Overall exposure'
