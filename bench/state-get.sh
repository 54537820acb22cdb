#!/usr/bin/env bash
# State GET through Tandem (HTTP/1.1) versus the same read sent directly, for Redis and
# PostgreSQL, side by side in one run: the `state` scenario of bench/run.sh, narrowed.
#   bench/state-get.sh            # 1 000 req/s for 10 s per path
#   bench/state-get.sh --quick    # a few seconds in all (a smoke test; figures mean little)
set -euo pipefail
exec "$(dirname "$0")/run.sh" "$@" state --stores redis,postgresql --ops get --protocols http1
