"""A subscriber app written with the SDK's FastAPI extension (DaprApp): subscribes to `orders`
and answers `hello`. Prints one JSON line per event."""
import json
import os

import uvicorn
from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI

app = FastAPI()
dapr_app = DaprApp(app)


@dapr_app.subscribe(pubsub="pubsub", topic="orders")
def orders(event=Body()):
    print(json.dumps({"event": "order", "data": event.get("data")}), flush=True)
    return {"status": "SUCCESS"}


@app.post("/hello")
def hello(body=Body()):
    return {"greeting": f"hello {body.get('name')}"}


if __name__ == "__main__":
    print(json.dumps({"event": "started"}), flush=True)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), log_level="warning")
