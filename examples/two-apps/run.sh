#!/usr/bin/env bash
# Two apps on Tandem's embedded defaults (SQLite state and pub/sub under ~/.tandem, SQLite name
# resolution): order-publisher publishes orders and calls order-processor directly;
# order-processor receives the orders and stores them. Nothing to install but Rust and Python.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -q -p tandem
TANDEM=../../target/release/tandem

"$TANDEM" run --app-id order-processor --app-port 6001 --dapr-http-port 3501 -- python3 subscriber.py &
PROCESSOR=$!
trap 'kill $PROCESSOR 2>/dev/null || true; wait $PROCESSOR 2>/dev/null || true' EXIT

"$TANDEM" run --app-id order-publisher --dapr-http-port 3500 -- python3 publisher.py
sleep 2   # let the last orders arrive before stopping order-processor
