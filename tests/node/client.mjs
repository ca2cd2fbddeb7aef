// A stock y-websocket client (yjs + y-websocket 3.x + ws) driven over stdin/stdout, one JSON
// command per line, one JSON reply per line. Used by tandem's end-to-end tests.
//
//   node client.mjs <ws-base-url> <doc> [name]
//
// Commands:
//   {"op":"wait-synced"}                          -> {"ok":true}
//   {"op":"insert","field":F,"index":I,"text":T}  -> {"ok":true}
//   {"op":"insert-embed","field":F,"index":I,"embed":{...}}            -> {"ok":true}
//   {"op":"insert-formatted","field":F,"index":I,"text":T,"attributes":{...}} -> {"ok":true}
//   {"op":"delete","field":F,"index":I,"len":N}   -> {"ok":true}
//   {"op":"text","field":F}                       -> {"ok":true,"text":S}
//   {"op":"wait-text","field":F,"text":S}         -> {"ok":true} once the field equals S
//   {"op":"set-awareness","state":{...}}          -> {"ok":true}
//   {"op":"states"}                               -> {"ok":true,"states":{clientId: state}}
//   {"op":"wait-states","count":N}                -> {"ok":true,"states":{...}} once N remote+local states exist
//   {"op":"type","field":F,"text":S}              -> {"ok":true}: one transaction (update) per character, unpaced
//   {"op":"closes"}                               -> {"ok":true,"closes":[{code,reason}],"closed":{code,reason}|null}
//   {"op":"wait-closed"}                          -> {"ok":true,"closed":{code,reason}} once the provider gave up for good
//   {"op":"wait-closes","count":N}                -> {"ok":true,"closes":[...]} once the server closed N times
//   {"op":"extensions"}                           -> {"ok":true,"extensions":S}: the socket's negotiated extensions
//   {"op":"close"}                                -> {"ok":true}, then exits
// Every wait is event driven and fails after "timeoutMs" (default 10000).
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import WebSocket from 'ws';
import { serveCommands, waitFor } from './driver.mjs';

const [url, room, name = 'client', token] = process.argv.slice(2);
const doc = new Y.Doc();
const provider = new WebsocketProvider(url, room, doc, {
  WebSocketPolyfill: WebSocket,
  params: token ? { token } : {}
});
// Every close the server sent, and the one after which the provider gave up for good.
const closes = [];
let closed = null;
provider.on('connection-close', (event) => { if (event) closes.push({ code: event.code, reason: event.reason }); });
provider.on('closed', (event) => { closed = { code: event.code, reason: event.reason }; });

const states = () => Object.fromEntries(provider.awareness.getStates());

async function handle(cmd) {
  const t = cmd.timeoutMs;
  switch (cmd.op) {
    case 'wait-synced':
      await waitFor(() => provider.synced, (f) => provider.on('sync', f), (f) => provider.off('sync', f), t);
      return {};
    case 'insert':
      doc.getText(cmd.field).insert(cmd.index, cmd.text);
      return {};
    case 'insert-embed':
      doc.getText(cmd.field).insertEmbed(cmd.index, cmd.embed);
      return {};
    case 'insert-formatted':
      doc.getText(cmd.field).insert(cmd.index, cmd.text, cmd.attributes);
      return {};
    case 'delete':
      doc.getText(cmd.field).delete(cmd.index, cmd.len);
      return {};
    case 'text':
      return { text: doc.getText(cmd.field).toString() };
    case 'wait-text': {
      const text = doc.getText(cmd.field);
      await waitFor(() => text.toString() === cmd.text, (f) => doc.on('update', f), (f) => doc.off('update', f), t);
      return {};
    }
    case 'type':
      for (const ch of cmd.text) {
        const text = doc.getText(cmd.field);
        text.insert(text.length, ch);
      }
      return {};
    case 'closes':
      return { closes, closed };
    case 'wait-closed':
      await waitFor(() => closed !== null, (f) => provider.on('closed', f), (f) => provider.off('closed', f), t);
      return { closed };
    case 'wait-closes': {
      const on = (f) => provider.on('connection-close', f);
      const off = (f) => provider.off('connection-close', f);
      await waitFor(() => closes.length >= cmd.count, on, off, t);
      return { closes };
    }
    case 'extensions':
      return { extensions: provider.ws ? provider.ws.extensions : null };
    case 'set-awareness':
      provider.awareness.setLocalState(cmd.state);
      return {};
    case 'states':
      return { states: states() };
    case 'wait-states':
      await waitFor(() => provider.awareness.getStates().size === cmd.count,
        (f) => provider.awareness.on('change', f), (f) => provider.awareness.off('change', f), t);
      return { states: states() };
    case 'close':
      provider.destroy();
      setTimeout(() => process.exit(0), 50);
      return {};
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

serveCommands(handle, () => provider.destroy());
