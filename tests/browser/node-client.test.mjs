// The wasm client under Node, against the real server: co-editing with a stock Yjs
// y-websocket client, and the provider's liveness rules (dead-socket detection, reconnect).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createServer } from 'node:net'
import WebSocket, { WebSocketServer } from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { Server, repo, uniqueDoc } from './harness.mjs'

const pkg = join(repo, 'wasm', 'pkg')
const { open, load, backoffDelay } = await import(join(pkg, 'index.js'))
await load(readFileSync(join(pkg, 'tandem_wasm_bg.wasm')))

let server
before(async () => { server = await Server.start() })
after(async () => { await server?.close() })

// Resolves when `check()` is true, re-checking on every event of `emitters`; fails after 10 s.
function until (check, subscribe, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { stop(); reject(new Error(`timed out waiting for ${what}`)) }, 10000)
    let unsubs = []
    const stop = () => { clearTimeout(timer); for (const u of unsubs) u() }
    const poke = () => { if (check()) { stop(); resolve() } }
    unsubs = subscribe(poke)
    poke()
  })
}

const onDoc = (doc, ...types) => (poke) => types.map((t) => doc.on(t, poke))
const onY = (ydoc) => (poke) => { ydoc.on('update', poke); return [() => ydoc.off('update', poke)] }

async function wasmClient (docName, userId, options = {}) {
  const doc = await open(docName, {
    url: server.http, user: { id: userId, name: userId }, WebSocket, offline: false, tabs: false, ...options
  })
  await until(() => doc.provider.status.synced, onDoc(doc, 'status'), `${userId} synced`)
  return doc
}

test('the wasm client and a stock y-websocket client co-edit', async () => {
  const name = uniqueDoc('yws')
  const wasm = await wasmClient(name, 'wasm-user')
  const ydoc = new Y.Doc()
  const yws = new WebsocketProvider(`${server.ws}/ws`, name, ydoc, { WebSocketPolyfill: WebSocket })
  yws.awareness.setLocalStateField('user', { id: 'yjs-user', name: 'Yjs', color: '#0a0' })
  await new Promise((resolve) => yws.once('sync', resolve))
  const ytext = ydoc.getText('description')

  const seen = []
  wasm.text('description').observe((c) => seen.push(c))

  wasm.text('description').insert(0, 'Hello')
  await until(() => ytext.toString() === 'Hello', onY(ydoc), 'Yjs to see the wasm edit')

  ytext.insert(5, ', world')
  await until(() => wasm.text('description').toString() === 'Hello, world', onDoc(wasm, 'text'), 'wasm to see the Yjs edit')
  const remote = seen.find((c) => !c.local)
  assert.deepEqual(remote.delta, [{ retain: 5 }, { insert: ', world' }])
  await until(() => wasm.presence.viewers().some((v) => v.userId === 'yjs-user'), onDoc(wasm, 'presence'), 'Yjs presence')

  // Concurrent edits at both ends converge.
  wasm.text('description').insert(0, '» ')
  ytext.insert(ytext.length, '!')
  await until(() => ytext.toString() === '» Hello, world!', onY(ydoc), 'Yjs to converge')
  await until(() => wasm.text('description').toString() === '» Hello, world!', onDoc(wasm, 'text'), 'wasm to converge')

  // Registers live in the Yjs document for plain Yjs clients to read.
  wasm.field('status').set('done')
  const registers = ydoc.getMap('tandem:registers')
  await until(() => [...registers.values()].some((v) => JSON.parse(v).value === 'done'), onY(ydoc), 'the register in Yjs')

  // Cursors: the wasm client's relative position resolves in Yjs at the same index...
  wasm.presence.setCursor('description', 2, 2)
  const wasmState = () => [...yws.awareness.getStates().values()].find((s) => s.user?.id === 'wasm-user')
  await until(() => wasmState()?.cursors?.description, (poke) => { yws.awareness.on('change', poke); return [() => yws.awareness.off('change', poke)] }, 'the wasm cursor in Yjs')
  const rel = Y.createRelativePositionFromJSON(wasmState().cursors.description.head)
  assert.equal(Y.createAbsolutePositionFromRelativePosition(rel, ydoc).index, 2)
  // ...and a y-codemirror style cursor of the Yjs client shows in the wasm client.
  const anchor = Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(ytext, 4))
  yws.awareness.setLocalStateField('cursor', { anchor, head: anchor })
  await until(() => wasm.presence.cursors('description').some((c) => c.user.id === 'yjs-user' && c.head === 4), onDoc(wasm, 'presence'), 'the Yjs cursor in wasm')

  // Every wasm edit is acknowledged as durable.
  await until(() => wasm.provider.unacknowledged === 0, onDoc(wasm, 'status'), 'acks')
  yws.destroy()
  ydoc.destroy()
  wasm.destroy()
})

test('reconnect delays grow exponentially, with jitter, up to the cap', () => {
  const low = Array.from({ length: 8 }, (_, n) => backoffDelay(n, 100, 5000, () => 0))
  const high = Array.from({ length: 8 }, (_, n) => backoffDelay(n, 100, 5000, () => 1))
  assert.deepEqual(low, [50, 100, 200, 400, 800, 1600, 2500, 2500])
  assert.deepEqual(high, [100, 200, 400, 800, 1600, 3200, 5000, 5000])
})

// A WebSocket relay in front of the server that can go silent without closing anything, as a
// connection through a dead NAT or a sleeping laptop does.
async function silentRelay (target) {
  const port = await new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)) })
  })
  const wss = new WebSocketServer({ host: '127.0.0.1', port })
  const relay = { url: `http://127.0.0.1:${port}`, silent: false, connections: 0, close: () => wss.close() }
  wss.on('connection', (client, req) => {
    relay.connections++
    const upstream = new WebSocket(`${target}${req.url}`)
    const queue = []
    upstream.on('open', () => { for (const m of queue.splice(0)) upstream.send(m) })
    client.on('message', (m) => {
      if (relay.silent) return
      if (upstream.readyState === 1) upstream.send(m)
      else queue.push(m)
    })
    upstream.on('message', (m) => { if (!relay.silent) client.send(m) })
    client.on('close', () => upstream.close())
    upstream.on('close', () => client.close())
  })
  return relay
}

test('a silent socket is detected by heartbeat and replaced; edits made meanwhile arrive', async () => {
  const name = uniqueDoc('heartbeat')
  const relay = await silentRelay(server.ws)
  const wasm = await wasmClient(name, 'sleepy', { url: relay.url, heartbeatMs: 50, silenceMs: 400, minBackoffMs: 20, maxBackoffMs: 100 })
  const reader = await wasmClient(name, 'reader')
  relay.silent = true
  wasm.text('description').insert(0, 'typed into a dead socket')
  await until(() => wasm.provider.status.reason === 'heartbeat timeout', onDoc(wasm, 'status'), 'heartbeat timeout')
  relay.silent = false
  await until(() => reader.text('description').toString() === 'typed into a dead socket', onDoc(reader, 'text'), 'the edit to arrive')
  await until(() => wasm.provider.unacknowledged === 0, onDoc(wasm, 'status'), 'acks after reconnect')
  assert.ok(relay.connections >= 2)
  wasm.destroy()
  reader.destroy()
  relay.close()
})
