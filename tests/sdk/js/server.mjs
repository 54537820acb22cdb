// An app written with the official SDK's DaprServer: subscribes to `orders` and answers the
// `hello` method. Prints one JSON line per event so the test can follow it.
import { DaprServer, CommunicationProtocolEnum, HttpMethod } from "@dapr/dapr";

const protocol = process.env.SDK_PROTOCOL === "grpc" ? CommunicationProtocolEnum.GRPC : CommunicationProtocolEnum.HTTP;
const server = new DaprServer({
  serverHost: "127.0.0.1",
  serverPort: process.env.APP_PORT,
  communicationProtocol: protocol,
  clientOptions: {
    daprHost: "127.0.0.1",
    daprPort: protocol === CommunicationProtocolEnum.GRPC ? process.env.DAPR_GRPC_PORT : process.env.DAPR_HTTP_PORT,
    communicationProtocol: protocol,
  },
});

await server.pubsub.subscribe("pubsub", "orders", async (data, headers) => {
  console.log(JSON.stringify({ event: "order", data, pubsubname: headers?.pubsubname ?? null }));
});
await server.invoker.listen("hello", async ({ body }) => {
  const payload = typeof body === "string" ? JSON.parse(body || "null") : body;
  return { greeting: `hello ${payload?.name}` };
}, { method: HttpMethod.POST });
await server.start();
console.log(JSON.stringify({ event: "started" }));
