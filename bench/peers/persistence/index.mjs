// Re-exports the SQLite extension for ../hocuspocus-server.mjs. Importing it from here (ESM)
// resolves the extension's own dependencies from this directory and yjs from ../node_modules,
// as an ES module: the same yjs instance as @hocuspocus/server's.
export { SQLite } from "@hocuspocus/extension-sqlite";
