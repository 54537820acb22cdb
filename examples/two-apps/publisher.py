"""order-publisher: publishes orders and calls order-processor directly.

Standard library only. Run it with its sidecar:
    tandem run --app-id order-publisher -- python3 publisher.py
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

DAPR = f"http://127.0.0.1:{os.environ.get('DAPR_HTTP_PORT', '3500')}"
COUNT = int(os.environ.get("ORDER_COUNT", "5"))


def call(method, path, payload=None):
    body = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"{DAPR}{path}", data=body, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read()
        return resp.status, (json.loads(text) if text else None)


def invoke_with_retry(payload, attempts=50):
    # The other app may still be starting: retry until it is reachable.
    for _ in range(attempts):
        try:
            return call("POST", "/v1.0/invoke/order-processor/method/hello", payload)
        except (urllib.error.HTTPError, urllib.error.URLError) as err:
            last = err
            time.sleep(0.2)
    raise SystemExit(f"order-processor never answered: {last}")


def main():
    status, answer = invoke_with_retry({"name": "order-publisher"})
    print(f"invoke order-processor/hello -> {status} {json.dumps(answer)}", flush=True)
    for i in range(1, COUNT + 1):
        status, _ = call("POST", "/v1.0/publish/pubsub/orders", {"orderId": i, "item": "coffee", "qty": i})
        print(f"published order {i} -> {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
