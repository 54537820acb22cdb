"""order-processor: receives orders over pub/sub and answers direct calls.

Standard library only. Run it with its sidecar:
    tandem run --app-id order-processor --app-port 6001 -- python3 subscriber.py
"""
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP_PORT = int(os.environ.get("APP_PORT", "6001"))
DAPR = f"http://127.0.0.1:{os.environ.get('DAPR_HTTP_PORT', '3500')}"


def save_state(key, value):
    body = json.dumps([{"key": key, "value": value}]).encode()
    req = urllib.request.Request(f"{DAPR}/v1.0/state/statestore", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req).close()


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, payload=None):
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/dapr/subscribe":
            self.reply(200, [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}])
        else:
            self.reply(404)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        data = json.loads(self.rfile.read(length) or b"null")
        if self.path == "/orders":
            order = data["data"]
            save_state(f"order-{order['orderId']}", order)
            print(f"received order {order['orderId']} (event {data['id']})", flush=True)
            self.reply(200, {"status": "SUCCESS"})
        elif self.path == "/hello":
            caller = self.headers.get("dapr-caller-app-id", "unknown")
            print(f"invoked by {caller} with {data}", flush=True)
            self.reply(200, {"greeting": f"hello {data.get('name')}", "from": "order-processor"})
        else:
            self.reply(404)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print(f"order-processor listening on {APP_PORT}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", APP_PORT), Handler).serve_forever()
