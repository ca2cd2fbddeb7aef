// Bytes on the wire of a joiner's first sync, with and without permessage-deflate: a stock
// y-websocket provider over Node's `ws` (which offers the extension by default) joins a
// document several times, once per mode, and reports what its socket read and wrote until it
// was synced. A measurement, not a test.
//
//   node wire.mjs <http-base> <ws-base> <doc> [update-file] [joins] [server-pid]
//
// With an update file (a binary Yjs update, e.g. W4's document), it is first posted to
// `POST /docs/{doc}/update`. With the server's pid (Linux), the server's CPU time per join is
// reported too (from /proc/<pid>/stat, in clock ticks of 10 ms: use enough joins).
import { readFileSync } from 'node:fs';
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import WebSocket from 'ws';

const [http, wsBase, room, file, joinsArg = '5', pid] = process.argv.slice(2);
// The server's user + system CPU time so far, in ms.
const cpuMs = () => {
  if (!pid) return 0;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
};
if (file) {
  const r = await fetch(`${http}/docs/${room}/update`, { method: 'POST', body: readFileSync(file),
    headers: { 'content-type': 'application/octet-stream' } });
  if (!r.ok) throw new Error(`posting the update: ${r.status} ${await r.text()}`);
}

class Plain extends WebSocket {
  constructor(url, protocols) { super(url, protocols, { perMessageDeflate: false }); }
}

async function join(Polyfill) {
  const doc = new Y.Doc();
  const started = performance.now();
  const provider = new WebsocketProvider(wsBase, room, doc, { WebSocketPolyfill: Polyfill });
  await new Promise((resolve) => provider.once('sync', resolve));
  const ms = performance.now() - started;
  const socket = provider.ws._socket;
  const result = { read: socket.bytesRead, written: socket.bytesWritten, ms,
    extensions: provider.ws.extensions, chars: doc.getText('text').length };
  provider.destroy();
  return result;
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const [mode, Polyfill] of [['permessage-deflate', WebSocket], ['uncompressed', Plain]]) {
  const runs = [];
  const cpu = cpuMs();
  for (let i = 0; i < Number(joinsArg); i++) runs.push(await join(Polyfill));
  const serverCpuMsPerJoin = pid ? (cpuMs() - cpu) / runs.length : undefined;
  console.log(JSON.stringify({ mode, extensions: runs[0].extensions, chars: runs[0].chars,
    server_cpu_ms_per_join: serverCpuMsPerJoin,
    read_bytes: median(runs.map((r) => r.read)), written_bytes: median(runs.map((r) => r.written)),
    sync_ms_median: Math.round(median(runs.map((r) => r.ms)) * 10) / 10 }));
}
process.exit(0);
