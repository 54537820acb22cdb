"""Drives the official Python SDK's DaprClient (gRPC, and HTTP for invoke_method) against the
sidecar and prints one JSON report."""
import json
import os
import sys

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import StateItem

RUN = os.environ["RUN_ID"]
APP_ID = os.environ["APP_ID"]
report = {}


def step(name, fn):
    try:
        report[name] = {"ok": True, "value": fn()}
    except Exception as err:  # noqa: BLE001 - the report carries every failure
        report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}


def key(k):
    return f"{RUN}-{k}"


with DaprClient() as d:
    step("save", lambda: d.save_state("statestore", key("a"), json.dumps({"n": 1})) and None)
    step("get", lambda: {"data": json.loads(d.get_state("statestore", key("a")).data), "etag": d.get_state("statestore", key("a")).etag != ""})

    def etags():
        etag = d.get_state("statestore", key("a")).etag
        d.save_state("statestore", key("a"), json.dumps({"n": 2}), etag=etag)
        try:
            d.save_state("statestore", key("a"), json.dumps({"n": 3}), etag=etag)
            return {"stale": "accepted"}
        except DaprGrpcError as err:
            return {"stale": err.code().name, "reason": err.error_code()}

    step("etag", etags)
    step("bulk", lambda: sorted(
        (i.key, i.data.decode() if i.data else "") for i in d.get_bulk_state("statestore", keys=[key("a"), key("missing")]).items
    ))

    def transaction():
        d.execute_state_transaction("statestore", operations=[
            TransactionalStateOperation(key=key("t1"), data=json.dumps({"t": 1}), operation_type=TransactionOperationType.upsert),
            TransactionalStateOperation(key=key("a"), operation_type=TransactionOperationType.delete),
        ])
        return {"t1": json.loads(d.get_state("statestore", key("t1")).data), "a": d.get_state("statestore", key("a")).data.decode()}

    step("transaction", transaction)
    step("saveBulk", lambda: d.save_bulk_state("statestore", states=[StateItem(key=key("b1"), value="one"), StateItem(key=key("b2"), value="two")]) and None)
    step("raw", lambda: d.get_state("statestore", key("b2")).data.decode())
    step("query", lambda: len(d.query_state("statestore", json.dumps({"filter": {"EQ": {"t": 1}}})).results))
    step("publish", lambda: d.publish_event("pubsub", "orders", json.dumps({"orderId": RUN}), data_content_type="application/json") and None)
    step("invoke", lambda: json.loads(d.invoke_method(APP_ID, "hello", data=json.dumps({"name": "sdk"}), http_verb="POST").data))
    step("secret", lambda: dict(d.get_secret("localsecrets", "api-key").secret))
    step("secretBulk", lambda: {k: dict(v) for k, v in d.get_bulk_secret("localsecrets").secrets.items()})
    step("setMetadata", lambda: d.set_metadata("sdk", "python") and None)

    def metadata():
        m = d.get_metadata()
        return {"id": m.application_id, "components": sorted(c.name for c in m.registered_components), "sdk": dict(m.extended_metadata).get("sdk")}

    step("metadata", metadata)

    def missing_store():
        try:
            d.get_state("nostore", "k")
            return "accepted"
        except DaprGrpcError as err:
            return {"code": err.code().name, "reason": err.error_code()}

    step("missingStore", missing_store)

    def streaming():
        # A streaming subscription (SubscribeTopicEventsAlpha1): subscribe, publish, receive,
        # acknowledge.
        topic = f"stream-{RUN}"
        sub = d.subscribe(pubsub_name="pubsub", topic=topic)
        try:
            d.publish_event("pubsub", topic, json.dumps({"streamed": RUN}), data_content_type="application/json")
            msg = sub.next_message()
            sub.respond_success(msg)
            return {"topic": msg.topic(), "data": msg.data()}
        finally:
            sub.close()

    step("stream", streaming)

    if os.environ.get("GRPC_APP"):
        def proxied():
            # gRPC proxying: the app's own gRPC service, called on the sidecar's gRPC port with
            # dapr-app-id metadata.
            from dapr.proto.common.v1 import common_pb2
            from dapr.proto.runtime.v1 import appcallback_pb2_grpc
            from google.protobuf import any_pb2

            with grpc.insecure_channel(f"127.0.0.1:{os.environ['DAPR_GRPC_PORT']}") as ch:
                stub = appcallback_pb2_grpc.AppCallbackStub(ch)
                req = common_pb2.InvokeRequest(method="hello", data=any_pb2.Any(value=json.dumps({"name": "proxy"}).encode()), content_type="application/json")
                metadata = [("dapr-app-id", APP_ID)]
                if os.environ.get("DAPR_API_TOKEN"):
                    metadata.append(("dapr-api-token", os.environ["DAPR_API_TOKEN"]))
                resp = stub.OnInvoke(req, metadata=metadata, timeout=10)
                return json.loads(resp.data.value)

        step("proxy", proxied)

print(json.dumps(report))
sys.exit(0)
