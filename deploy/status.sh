#!/usr/bin/env bash
# Which site is active, the database primary and epoch, the masters, the proxies' modes.
#
#   deploy/status.sh [--json]
#
# Environment: TANDEM (the tandem executable), TANDEM_RUN_DIR (the run directory of `tandem up`).
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
exec "${TANDEM:-tandem}" dr status "$@"
