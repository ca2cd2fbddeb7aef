// Starts a stock Hocuspocus 3.x server for the benchmark: no persistence (unless SQLITE_DATABASE,
// below) and no authentication hook (every token is accepted). Listens on HOST:PORT, loopback only.
//
// With REDIS_URL (redis://HOST:PORT), it runs as one instance of several: the stock
// @hocuspocus/extension-redis (same version as the server) on that Redis, so instances started
// with the same REDIS_URL share documents, as in Hocuspocus's scaling guide. INSTANCE names the
// instance (the extension's `identifier`; default: a random one).
//
// With SQLITE_DATABASE (a file path), it stores its documents there with the stock
// @hocuspocus/extension-sqlite (same version as the server), Hocuspocus's own persistence: a
// document is loaded from the file when first opened and written back (debounced, 2 s, at most
// 10 s apart, and when its last client leaves). The extension lives in ./persistence (its own
// package: its sqlite3 dependency is a native addon built from source, which bench/run.sh
// installs only for PEER_PERSISTENCE=1), so the default runs never need it.
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

if (process.env.SQLITE_DATABASE) {
  let SQLite;
  try {
    ({ SQLite } = await import(new URL("./persistence/index.mjs", import.meta.url)));
  } catch (error) {
    console.error(
      `cannot load @hocuspocus/extension-sqlite from ${new URL("./persistence/", import.meta.url).pathname} ` +
        "(install it there: npm_config_nodedir=/usr npm_config_build_from_source=true npm ci)",
    );
    throw error;
  }
  extensions.push(new SQLite({ database: process.env.SQLITE_DATABASE }));
}

const server = new Server({ quiet: true, stopOnSignals: false, extensions });
// Server.listen() passes `address` where node expects `host` and so binds every interface:
// listen on the loopback address ourselves.
server.httpServer.listen({ port, host }, () => {
  const addr = server.httpServer.address();
  const redis = process.env.REDIS_URL ? ` (redis ${process.env.REDIS_URL})` : "";
  const sqlite = process.env.SQLITE_DATABASE ? ` (sqlite ${process.env.SQLITE_DATABASE})` : "";
  console.log(`hocuspocus listening on ${addr.address}:${addr.port}${redis}${sqlite}`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
