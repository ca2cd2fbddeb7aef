// Starts a stock Hocuspocus 3.x server for the benchmark: no persistence and no authentication
// hook (every token is accepted). Listens on HOST:PORT, loopback only.
//
// With REDIS_URL (redis://HOST:PORT), it runs as one instance of several: the stock
// @hocuspocus/extension-redis (same version as the server) on that Redis, so instances started
// with the same REDIS_URL share documents, as in Hocuspocus's scaling guide. INSTANCE names the
// instance (the extension's `identifier`; default: a random one).
import { Server } from "@hocuspocus/server";

const host = process.env.HOST || "127.0.0.1";
const port = Number.parseInt(process.env.PORT || "0", 10);

const extensions = [];
if (process.env.REDIS_URL) {
  const { Redis } = await import("@hocuspocus/extension-redis");
  const url = new URL(process.env.REDIS_URL);
  const redis = { host: url.hostname, port: Number.parseInt(url.port || "6379", 10) };
  if (process.env.INSTANCE) redis.identifier = process.env.INSTANCE;
  extensions.push(new Redis(redis));
}

const server = new Server({ quiet: true, stopOnSignals: false, extensions });
// Server.listen() passes `address` where node expects `host` and so binds every interface:
// listen on the loopback address ourselves.
server.httpServer.listen({ port, host }, () => {
  const addr = server.httpServer.address();
  const redis = process.env.REDIS_URL ? ` (redis ${process.env.REDIS_URL})` : "";
  console.log(`hocuspocus listening on ${addr.address}:${addr.port}${redis}`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
