// Records the frames stock y-websocket clients send, for the fuzz seed corpora.
//
//   node fuzz/capture/capture.mjs            (uses tests/node/node_modules)
//
// Starts a small WebSocket server (ws) that answers like the reference y-websocket server
// (sync step 1 + awareness on connect, step 2 replies, broadcast of updates and awareness),
// connects two stock `WebsocketProvider`s (y-websocket 3.x) and has them edit, format, undo,
// use maps and arrays, move cursors and leave. Every frame in both directions is written to
// fuzz/capture/session.json, and turned into seed files:
//   fuzz/corpus/protocol/capture-*   frame scripts (the `protocol` target's 0x00 input form):
//                                    the whole session, and each client frame on its own
//   fuzz/corpus/update/capture-*     every update and state vector payload (both directions)
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const fuzzDir = path.resolve(here, '..');
// CommonJS builds throughout, so y-websocket and this script share one yjs instance.
const require = createRequire(path.resolve(fuzzDir, '../tests/node/package.json'));
const Y = require('yjs');
const { WebsocketProvider } = require('y-websocket');
const WebSocket = require('ws');
const syncProtocol = require('y-protocols/sync');
const awarenessProtocol = require('y-protocols/awareness');
const encoding = require('lib0/encoding');
const decoding = require('lib0/decoding');

const MSG_SYNC = 0;
const MSG_AWARENESS = 1;

// ---- a reference-style server that records everything ----
const serverDoc = new Y.Doc();
serverDoc.getText('description').insert(0, 'Server text: héllo');
const serverAwareness = new awarenessProtocol.Awareness(serverDoc);
serverAwareness.setLocalState(null);
const conns = new Map(); // ws -> { id, ids: Set<clientID> }
const log = []; // { conn, dir: 'in'|'out', hex }
const waiters = []; // resolve functions waiting for the next client frame

function record(conn, dir, data) {
  log.push({ conn, dir, hex: Buffer.from(data).toString('hex') });
}

function send(ws, data) {
  record(conns.get(ws).id, 'out', data);
  ws.send(data);
}

serverDoc.on('update', (update, origin) => {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, MSG_SYNC);
  syncProtocol.writeUpdate(e, update);
  const frame = encoding.toUint8Array(e);
  for (const ws of conns.keys()) if (ws !== origin) send(ws, frame);
});

serverAwareness.on('update', ({ added, updated, removed }, origin) => {
  const changed = added.concat(updated, removed);
  if (origin && conns.has(origin)) {
    const c = conns.get(origin);
    added.forEach((id) => c.ids.add(id));
    removed.forEach((id) => c.ids.delete(id));
  }
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, MSG_AWARENESS);
  encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(serverAwareness, changed));
  const frame = encoding.toUint8Array(e);
  for (const ws of conns.keys()) send(ws, frame);
});

const wss = new WebSocket.WebSocketServer({ host: '127.0.0.1', port: 0 });
let nextConn = 0;
wss.on('connection', (ws) => {
  conns.set(ws, { id: nextConn++, ids: new Set() });
  ws.binaryType = 'arraybuffer';
  ws.on('message', (data) => {
    const bytes = new Uint8Array(data);
    record(conns.get(ws).id, 'in', bytes);
    const decoder = decoding.createDecoder(bytes);
    const e = encoding.createEncoder();
    switch (decoding.readVarUint(decoder)) {
      case MSG_SYNC:
        encoding.writeVarUint(e, MSG_SYNC);
        syncProtocol.readSyncMessage(decoder, e, serverDoc, ws);
        if (encoding.length(e) > 1) send(ws, encoding.toUint8Array(e));
        break;
      case MSG_AWARENESS:
        awarenessProtocol.applyAwarenessUpdate(serverAwareness, decoding.readVarUint8Array(decoder), ws);
        break;
    }
    waiters.splice(0).forEach((f) => f());
  });
  ws.on('close', () => {
    const c = conns.get(ws);
    conns.delete(ws);
    awarenessProtocol.removeAwarenessStates(serverAwareness, Array.from(c.ids), null);
  });
  const step1 = encoding.createEncoder();
  encoding.writeVarUint(step1, MSG_SYNC);
  syncProtocol.writeSyncStep1(step1, serverDoc);
  send(ws, encoding.toUint8Array(step1));
  const states = Array.from(serverAwareness.getStates().keys());
  if (states.length > 0) {
    const a = encoding.createEncoder();
    encoding.writeVarUint(a, MSG_AWARENESS);
    encoding.writeVarUint8Array(a, awarenessProtocol.encodeAwarenessUpdate(serverAwareness, states));
    send(ws, encoding.toUint8Array(a));
  }
});
await new Promise((resolve) => wss.on('listening', resolve));
const url = `ws://127.0.0.1:${wss.address().port}/ws`;

// ---- stock clients ----
const nextFrame = () => new Promise((resolve) => waiters.push(resolve));

async function client(name, color) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(url, 'capture-room', doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
  });
  provider.awareness.setLocalState({ user: { name, color } });
  await new Promise((resolve) => provider.once('sync', resolve));
  return { doc, provider, text: doc.getText('description') };
}

// Runs `action` and waits until the server has received the frame(s) it produces.
async function step(action) {
  const got = nextFrame();
  action();
  await got;
}

const alice = await client('Alice', '#30bced');
const bob = await client('Bob', '#ee6352');
const undo = new Y.UndoManager(alice.text);

await step(() => alice.text.insert(0, 'Hello '));
await step(() => alice.text.insert(6, 'wörld 👋🏽'));
await step(() => bob.text.delete(0, 2));
await step(() => bob.text.format(0, 3, { bold: true }));
await step(() => alice.doc.getMap('meta').set('status', 'open'));
await step(() => alice.doc.getMap('meta').set('nested', { list: [1, 2.5, 'x', null, true], n: 2 ** 40 }));
await step(() => bob.doc.getArray('items').push([1, 'two', new Uint8Array([3, 4])]));
await step(() => bob.doc.getText('comment:42').insert(0, 'A comment ✓'));
await step(() => alice.doc.transact(() => {
  alice.text.insert(0, 'Title: ');
  alice.text.delete(alice.text.length - 2, 2);
}));
await step(() => undo.undo());
await step(() => undo.redo());
const pos = (t, i) => Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(t, i));
await step(() => alice.provider.awareness.setLocalStateField('cursor', {
  anchor: pos(alice.text, 1), head: pos(alice.text, 4),
}));
await step(() => bob.provider.awareness.setLocalStateField('typing', 'description'));
await step(() => alice.doc.getXmlFragment('prosemirror').insert(0, [new Y.XmlElement('paragraph')]));
await step(() => alice.provider.destroy());
await step(() => bob.text.insert(0, '!'));
await step(() => bob.provider.destroy());
wss.close();

// ---- seeds ----
writeFileSync(path.join(here, 'session.json'), JSON.stringify(log, null, 1) + '\n');

const seeds = { protocol: new Map(), update: new Map() };
const addSeed = (target, kind, bytes) => {
  const buf = Buffer.from(bytes);
  const hash = createHash('sha1').update(buf).digest('hex').slice(0, 16);
  seeds[target].set(`capture-${kind}-${hash}`, buf);
};
// A frame-script record: [op << 4 | conn][len u16 LE][frame]; op 0 = frame from a writer.
const record0 = (conn, frame) => {
  const head = Buffer.alloc(3);
  head[0] = conn & 0x0f;
  head.writeUInt16LE(frame.length, 1);
  return Buffer.concat([head, frame]);
};

const session = [Buffer.from([0])];
for (const { conn, dir, hex } of log) {
  const frame = Buffer.from(hex, 'hex');
  if (dir === 'in') {
    session.push(record0(conn, frame));
    addSeed('protocol', 'frame', Buffer.concat([Buffer.from([0]), record0(conn, frame)]));
  }
  const d = decoding.createDecoder(frame);
  if (decoding.readVarUint(d) === MSG_SYNC) {
    const kind = decoding.readVarUint(d);
    const payload = decoding.readVarUint8Array(d);
    addSeed('update', kind === 0 ? 'sv' : 'update', payload);
  }
}
addSeed('protocol', 'session', Buffer.concat(session));

for (const [target, files] of Object.entries(seeds)) {
  const dir = path.join(fuzzDir, 'corpus', target);
  mkdirSync(dir, { recursive: true });
  for (const [name, buf] of files) writeFileSync(path.join(dir, name), buf);
  console.log(`${target}: ${files.size} seed files in ${path.relative(process.cwd(), dir)}`);
}
process.exit(0);
