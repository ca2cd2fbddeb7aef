// Stock Hocuspocus providers (@hocuspocus/provider 3.x + yjs + ws) sharing one socket
// (HocuspocusProviderWebsocket), driven over stdin/stdout, one JSON command per line, one JSON
// reply per line. Used by tandem's end-to-end tests.
//
//   node hocuspocus.mjs <ws-url>
//
// Commands (every one but "sockets" and "close" names a document with "doc"):
//   {"op":"open","doc":D,"token":T}          -> {"ok":true,"scope":S} once authenticated,
//                                               {"ok":true,"failed":reason} once refused
//   {"op":"wait-synced","doc":D}             -> {"ok":true}
//   {"op":"insert","doc":D,"field":F,"index":I,"text":T} -> {"ok":true}
//   {"op":"text","doc":D,"field":F}          -> {"ok":true,"text":S}
//   {"op":"wait-text","doc":D,"field":F,"text":S} -> {"ok":true} once the field equals S
//   {"op":"wait-unsynced","doc":D,"count":N} -> {"ok":true} once provider.unsyncedChanges == N
//   {"op":"status","doc":D}                  -> {"ok":true,"unsynced":N,"scope":S,"refused":R,
//                                                "failed":[reasons]} (R: SyncStatus(false) seen)
//   {"op":"wait-refused","doc":D,"count":N}  -> {"ok":true} once N SyncStatus(false) arrived
//   {"op":"wait-failed","doc":D}             -> {"ok":true,"reason":S} at onAuthenticationFailed
//   {"op":"stateless","doc":D,"payload":P}   -> {"ok":true} (provider.sendStateless)
//   {"op":"wait-stateless","doc":D}          -> {"ok":true,"payload":P}, the next one received
//   {"op":"set-awareness","doc":D,"state":{...}} -> {"ok":true}
//   {"op":"wait-states","doc":D,"count":N}   -> {"ok":true,"states":{...}} once N states exist
//   {"op":"leave","doc":D}                   -> {"ok":true} (provider.destroy(): a Close message)
//   {"op":"sockets"}                         -> {"ok":true,"opened":N,"extensions":S} WebSockets
//                                               opened so far, the last one's negotiated extensions
//   {"op":"close"}                           -> {"ok":true}, then exits
// Every wait is event driven and fails after "timeoutMs" (default 10000).
import * as Y from 'yjs';
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider';
import WebSocket from 'ws';
import { serveCommands, waitFor } from './driver.mjs';
import { EventEmitter } from 'node:events';

const [url] = process.argv.slice(2);
let opened = 0;
let last = null;
class CountingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    opened += 1;
    last = this;
  }
}
const socket = new HocuspocusProviderWebsocket({ url, WebSocketPolyfill: CountingWebSocket });
const docs = new Map();


function open(name, token) {
  const entry = { events: new EventEmitter(), refused: 0, failed: [], stateless: [] };
  entry.provider = new HocuspocusProvider({
    websocketProvider: socket,
    name,
    token,
    document: new Y.Doc(),
    onAuthenticationFailed: ({ reason }) => { entry.failed.push(reason); entry.events.emit('change'); },
    onAuthenticated: () => entry.events.emit('change'),
    onStateless: ({ payload }) => { entry.stateless.push(payload); entry.events.emit('change'); },
    onUnsyncedChanges: () => entry.events.emit('change'),
    onSynced: () => entry.events.emit('change'),
    // SyncStatus(false): the provider itself ignores it; counted here to see it arrive.
    onMessage: ({ message }) => {
      message.readVarString();
      if (message.readVarUint() === 8 && message.readVarUint() === 0) {
        entry.refused += 1;
        entry.events.emit('change');
      }
    },
  });
  // A provider on a shared socket is attached by the app.
  entry.provider.attach();
  docs.set(name, entry);
  return entry;
}

function entryOf(cmd) {
  const entry = docs.get(cmd.doc);
  if (!entry) throw new Error(`no document ${cmd.doc}`);
  return entry;
}

const until = (entry, check, t) => waitFor(check,
  (f) => entry.events.on('change', f), (f) => entry.events.off('change', f), t);

async function handle(cmd) {
  const t = cmd.timeoutMs;
  switch (cmd.op) {
    case 'open': {
      const entry = open(cmd.doc, cmd.token ?? '');
      const p = entry.provider;
      await until(entry, () => p.isAuthenticated || entry.failed.length > 0, t);
      return entry.failed.length > 0 ? { failed: entry.failed[0] } : { scope: p.authorizedScope };
    }
    case 'wait-synced': {
      const entry = entryOf(cmd);
      await until(entry, () => entry.provider.isSynced, t);
      return {};
    }
    case 'insert':
      entryOf(cmd).provider.document.getText(cmd.field).insert(cmd.index, cmd.text);
      return {};
    case 'text':
      return { text: entryOf(cmd).provider.document.getText(cmd.field).toString() };
    case 'wait-text': {
      const doc = entryOf(cmd).provider.document;
      const text = doc.getText(cmd.field);
      await waitFor(() => text.toString() === cmd.text, (f) => doc.on('update', f), (f) => doc.off('update', f), t);
      return {};
    }
    case 'wait-unsynced': {
      const entry = entryOf(cmd);
      await until(entry, () => entry.provider.unsyncedChanges === cmd.count, t);
      return {};
    }
    case 'status': {
      const entry = entryOf(cmd);
      const p = entry.provider;
      return { unsynced: p.unsyncedChanges, scope: p.authorizedScope ?? null, refused: entry.refused, failed: entry.failed };
    }
    case 'wait-refused': {
      const entry = entryOf(cmd);
      await until(entry, () => entry.refused >= cmd.count, t);
      return {};
    }
    case 'wait-failed': {
      const entry = entryOf(cmd);
      const seen = cmd.after ?? 0;
      await until(entry, () => entry.failed.length > seen, t);
      return { reason: entry.failed[entry.failed.length - 1] };
    }
    case 'stateless':
      entryOf(cmd).provider.sendStateless(cmd.payload);
      return {};
    case 'wait-stateless': {
      const entry = entryOf(cmd);
      await until(entry, () => entry.stateless.length > 0, t);
      return { payload: entry.stateless.shift() };
    }
    case 'set-awareness':
      entryOf(cmd).provider.awareness.setLocalState(cmd.state);
      return {};
    case 'wait-states': {
      const awareness = entryOf(cmd).provider.awareness;
      await waitFor(() => awareness.getStates().size === cmd.count,
        (f) => awareness.on('change', f), (f) => awareness.off('change', f), t);
      return { states: Object.fromEntries(awareness.getStates()) };
    }
    case 'leave':
      entryOf(cmd).provider.destroy();
      docs.delete(cmd.doc);
      return {};
    case 'sockets':
      return { opened, extensions: last ? last.extensions : null };
    case 'close':
      for (const entry of docs.values()) entry.provider.destroy();
      socket.destroy();
      setTimeout(() => process.exit(0), 50);
      return {};
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

serveCommands(handle, () => socket.destroy());
