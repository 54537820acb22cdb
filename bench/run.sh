#!/usr/bin/env bash
# Every benchmark scenario, Tandem side by side with the direct path, printed as one report
# (Markdown tables on stdout, progress on stderr). Exits non-zero when a scenario fails.
#
#   bench/run.sh                  # full run, about 17 minutes after the build: run it on a quiet machine
#   bench/run.sh --quick          # smoke test, about a minute after the build (figures mean little)
#   bench/run.sh state invoke     # some scenarios: state invoke publish subscribe cpu footprint
#   bench/run.sh --pin            # generator on CPU 0; sidecars and apps on CPU 1 (taskset)
#   bench/run.sh --rate 2000 --seconds 30 --load-seconds 600   # any tandem-bench flag (--help)
#
# Needs the local Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, database test);
# valgrind for the `cpu` scenario (skipped without it). Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p tandem -p tandem-bench
PIN=()
for arg in "$@"; do
  if [ "$arg" = "--pin" ]; then PIN=(taskset -c 0); fi
done
exec "${PIN[@]}" "$TARGET/release/tandem-bench" --tandem "$TARGET/release/tandem" "$@"
