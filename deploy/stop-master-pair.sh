#!/usr/bin/env bash
# Stop the master Configuration Server pair of a site (it becomes dormant).
#
#   deploy/stop-master-pair.sh SITE
#
# Calls `tandem dr deactivate SITE`: each master of SITE stops gracefully, releasing the master
# lease at once. The database primary does not move; proxies go to limited mode until a master
# is active again (`deploy/start-master-pair.sh`).
#
# Environment: TANDEM (the tandem executable, default: tandem on PATH), TANDEM_RUN_DIR (the run
# directory given to `tandem up`).
set -euo pipefail
if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
exec "${TANDEM:-tandem}" dr deactivate "$1"
