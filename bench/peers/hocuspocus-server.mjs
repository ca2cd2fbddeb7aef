// Starts a stock Hocuspocus 3.x server for the benchmark: no extensions, so no persistence and
// no authentication hook (every token is accepted). Listens on HOST:PORT, loopback only.
import { Server } from "@hocuspocus/server";

const host = process.env.HOST || "127.0.0.1";
const port = Number.parseInt(process.env.PORT || "0", 10);

const server = new Server({ quiet: true, stopOnSignals: false });
// Server.listen() passes `address` where node expects `host` and so binds every interface:
// listen on the loopback address ourselves.
server.httpServer.listen({ port, host }, () => {
  const addr = server.httpServer.address();
  console.log(`hocuspocus listening on ${addr.address}:${addr.port}`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
