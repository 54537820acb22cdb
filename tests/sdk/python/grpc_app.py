"""A subscriber app written with the SDK's gRPC extension (dapr.ext.grpc.App): subscribes to
`orders` and answers the `hello` method. Prints one JSON line per event."""
import json
import os

from dapr.ext.grpc import App, InvokeMethodRequest, InvokeMethodResponse

app = App()


@app.subscribe(pubsub_name="pubsub", topic="orders")
def orders(event) -> None:
    data = json.loads(event.Data()) if event.Data() else None
    print(json.dumps({"event": "order", "data": data}), flush=True)


@app.method(name="hello")
def hello(request: InvokeMethodRequest) -> InvokeMethodResponse:
    body = json.loads(request.text() or "null")
    return InvokeMethodResponse(json.dumps({"greeting": f"hello {body.get('name')}"}).encode(), "application/json")


if __name__ == "__main__":
    print(json.dumps({"event": "started"}), flush=True)
    app.run(int(os.environ["APP_PORT"]))
