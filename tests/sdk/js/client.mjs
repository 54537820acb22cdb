// Drives the official SDK's DaprClient against the sidecar and prints one JSON report.
import { DaprClient, CommunicationProtocolEnum, HttpMethod } from "@dapr/dapr";

const grpc = process.env.SDK_PROTOCOL === "grpc";
const client = new DaprClient({
  daprHost: "127.0.0.1",
  daprPort: grpc ? process.env.DAPR_GRPC_PORT : process.env.DAPR_HTTP_PORT,
  communicationProtocol: grpc ? CommunicationProtocolEnum.GRPC : CommunicationProtocolEnum.HTTP,
});
const report = {};
const step = async (name, fn) => {
  try {
    report[name] = { ok: true, value: (await fn()) ?? null };
  } catch (e) {
    report[name] = { ok: false, error: String(e?.message ?? e) };
  }
};

const run = process.env.RUN_ID;
await step("save", () => client.state.save("statestore", [
  { key: `${run}-a`, value: { n: 1, tags: ["x"] } },
  { key: `${run}-b`, value: "text" },
]));
await step("get", () => client.state.get("statestore", `${run}-a`));
await step("getBulk", async () => (await client.state.getBulk("statestore", [`${run}-a`, `${run}-b`, `${run}-missing`]))
  .map((i) => ({ key: i.key, data: i.data ?? null })));
await step("transaction", () => client.state.transaction("statestore", [
  { operation: "upsert", request: { key: `${run}-c`, value: [1, 2] } },
  { operation: "delete", request: { key: `${run}-b` } },
]));
await step("afterTransaction", async () => ({
  c: await client.state.get("statestore", `${run}-c`),
  b: (await client.state.get("statestore", `${run}-b`)) ?? null,
}));
await step("delete", () => client.state.delete("statestore", `${run}-a`));
await step("afterDelete", async () => (await client.state.get("statestore", `${run}-a`)) ?? null);
await step("query", async () => {
  const r = await client.state.query("statestore", { filter: { EQ: { n: 1 } }, sort: [], page: { limit: 10 } });
  return (r?.results ?? []).length;
});
await step("publish", () => client.pubsub.publish("pubsub", "orders", { orderId: run }));
await step("invoke", () => client.invoker.invoke(process.env.APP_ID, "hello", HttpMethod.POST, { name: "sdk" }));
await step("secret", () => client.secret.get("localsecrets", "api-key"));
await step("secretBulk", () => client.secret.getBulk("localsecrets"));
await step("metadataSet", () => client.metadata.set("sdk", "js"));
await step("metadata", async () => {
  const m = await client.metadata.get();
  return { id: m.id, components: (m.components ?? []).map((c) => c.name).sort(), sdk: m.extended?.sdk ?? null };
});
console.log(JSON.stringify(report));
process.exit(0);
