#!/usr/bin/env bash
# Start the master Configuration Server pair of a site: make it the active site.
#
#   deploy/start-master-pair.sh SITE [--force]
#
# Calls `tandem dr activate SITE`: the database primary moves to SITE (a planned switchover while
# the replica set has a quorum; with --force, a forced recovery when it has lost it — the possible
# loss is printed), the site's master pair starts, and the masters of other sites that still
# answer stop. Proxies at every site find the new master by themselves.
#
# Environment: TANDEM (the tandem executable, default: tandem on PATH), TANDEM_RUN_DIR (the run
# directory given to `tandem up`).
set -euo pipefail
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
exec "${TANDEM:-tandem}" dr activate "$@"
