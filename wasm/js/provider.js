// Provider: keeps a TandemDoc in sync with a tandem server and with the other tabs of this
// origin, and keeps its unacknowledged edits safe across reloads.
//
// - WebSocket to /ws/{doc}?tandem=1 (y-websocket protocol plus tandem's acks and conditional
//   register writes). Reconnects with exponential backoff and jitter; a socket silent for
//   `silenceMs` is declared dead (presence renewals are echoed by the server every 15 s, so a
//   live socket is never silent that long).
// - When WebSocket connections keep failing (`fallbackAfter` in a row without ever opening), it
//   falls back to Server-Sent Events (/docs/{doc}/events?format=yjs) plus HTTP POST of updates
//   and PUT of conditional register writes.
// - Closes the connection when the tab has been hidden for `hiddenCloseMs`, reconnects and
//   catches up when it is visible again; goes offline when the browser says so.
// - Every local edit is kept (in IndexedDB when available) until the server acknowledges it as
//   durable; on reconnect the sync handshake sends whatever the server lacks.
// - Shares updates and presence with other tabs through BroadcastChannel, online or not.
//
// Status ('status' event, also on the document): {state: 'connecting' | 'connected' | 'offline',
// synced, transport: 'websocket' | 'sse' | null, unacknowledged, unsaved, reason}: `unacknowledged`
// edits are not yet durable on the server; `unsaved` edits are not yet in this device's offline
// store (with none, every unacknowledged edit counts).
import {
  decodeFrame, syncStep1Frame, syncStep2Frame, updateFrame, awarenessFrame, setFieldFrame, Document
} from './tandem_wasm.js'
import { Emitter } from './emitter.js'
import { TabChannel } from './tabs.js'
import { backoffDelay, fromBase64 } from './backoff.js'

const DEFAULTS = {
  heartbeatMs: 5000,
  silenceMs: 30000,
  hiddenCloseMs: 30000,
  minBackoffMs: 250,
  maxBackoffMs: 10000,
  fallbackAfter: 3,
  saveStateMs: 400
}

function bases (url) {
  const http = url.replace(/^ws(s?):/, 'http$1:').replace(/\/+$/, '')
  return { http, ws: http.replace(/^http(s?):/, 'ws$1:') }
}

export class Provider extends Emitter {
  constructor (doc, options = {}) {
    super()
    this.doc = doc
    this.options = { ...DEFAULTS, ...options }
    const url = options.url ?? globalThis.location?.origin
    if (!url) throw new Error('tandem: no server url given')
    this.urls = bases(url)
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket
    this.EventSource = options.EventSource ?? globalThis.EventSource
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis)
    this.store = options.store ?? null
    this.pending = [] // [{seq, update, key: Promise<key | null>, stored}] not yet acknowledged
    this.seq = 0
    this.released = [] // acknowledged edits still in the offline queue until the next state save
    this.sent = [] // per connection: the pending seq covered by each update sent, in order
    this.status = { state: 'offline', synced: false, transport: null, unacknowledged: 0, unsaved: 0, reason: 'idle' }
    this.ws = null
    this.es = null
    this.attempts = 0
    this.wsFailures = 0
    this.lastHeard = 0
    this.stopped = true
    this.hiddenClosed = false
    this.tabPeers = new Set()
    this._timers = new Set()
    this._retryTimer = null
    this._saveTimer = null
    this._probe = 0
    this._unsub = [
      doc.on('update', (u) => this._localUpdate(u)),
      doc.on('awareness', (p) => this._localAwareness(p)),
      doc.on('field-request', () => this._sendRequests()),
      doc.on('text', () => this._scheduleSave()),
      doc.on('field', () => this._scheduleSave())
    ]
    this.tabs = options.tabs === false
      ? null
      : new TabChannel(doc.name, doc.clientId, {
        state: () => doc.encodeState(),
        update: (update, author) => doc._applyRemote(update, author),
        awareness: (payload, from) => {
          this.tabPeers.add(from)
          doc._applyAwareness(payload)
        },
        hello: () => this.tabs.sendAwareness(doc._localAwareness())
      }, options.BroadcastChannel)
    this._listen()
  }

  get unacknowledged () {
    return this.pending.length
  }

  // Applies the cached state and the unacknowledged edits from the offline store.
  async loadCached () {
    if (!this.store) return
    const { state, pending } = await this.store.load()
    if (state) this.doc._applyRemote(state, undefined)
    for (const p of pending) {
      this.doc._applyRemote(p.update, this.doc.user.id)
      this.pending.push({ seq: ++this.seq, update: p.update, key: Promise.resolve(p.key), stored: true })
    }
    this._emitStatus()
  }

  connect () {
    this.stopped = false
    if (this.tabs) {
      this.tabs.hello()
      this.tabs.sendAwareness(this.doc._localAwareness())
    }
    this._tick = setInterval(() => this._heartbeat(), this.options.heartbeatMs)
    this._connectNow()
  }

  // Stops syncing with the server (other tabs are still served).
  disconnect () {
    this.stopped = true
    clearInterval(this._tick)
    this._close('closed')
  }

  destroy () {
    this.disconnect()
    this._saveNow()
    for (const u of this._unsub) u()
    if (this.tabs) this.tabs.close()
    this._unlisten()
    for (const t of this._timers) clearTimeout(t)
  }

  // --- connection lifecycle ------------------------------------------------------------------

  _browserOffline () {
    return globalThis.navigator?.onLine === false
  }

  _connectNow () {
    clearTimeout(this._retryTimer)
    this._retryTimer = null
    if (this.stopped || this.ws || this.es || this.hiddenClosed) return
    if (this._browserOffline()) {
      this._setStatus({ state: 'offline', synced: false, transport: null, reason: 'browser offline' })
      return
    }
    const fallback = this.wsFailures >= this.options.fallbackAfter && this.EventSource && this.fetch
    if (!this.WebSocket) this._connectSse()
    else if (!fallback) this._connectWs()
    else this._probeThenConnect()
  }

  // WebSockets keep failing. If plain HTTP reaches the server, WebSockets are blocked on the
  // way (a proxy): use SSE + HTTP. If not, the server is down: keep trying WebSockets.
  async _probeThenConnect () {
    this._setStatus({ state: 'connecting', synced: false, transport: null, reason: undefined })
    const probe = ++this._probe
    let reachable = false
    try {
      const res = await this.fetch(`${this.urls.http}/healthz`, { cache: 'no-store' })
      reachable = res.ok
    } catch {}
    if (probe !== this._probe || this.stopped || this.ws || this.es || this.hiddenClosed) return
    if (reachable) this._connectSse()
    else this._connectWs()
  }

  _close (reason) {
    this._probe++
    const ws = this.ws
    const es = this.es
    this.ws = null
    this.es = null
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null
      try { ws.close() } catch {}
    }
    if (es) es.close()
    if (ws || es) this._lost()
    clearTimeout(this._retryTimer)
    this._retryTimer = null
    this._setStatus({ state: 'offline', synced: false, transport: null, reason })
  }

  // The connection is gone: requests in flight on it will get no answer, peers are unknown.
  _lost () {
    this.sent = []
    this.doc._resetRequests()
    this.doc._removePeers(this.tabPeers)
  }

  _retry (reason) {
    this._lost()
    if (this.stopped || this.hiddenClosed) {
      this._setStatus({ state: 'offline', synced: false, transport: null, reason })
      return
    }
    const delay = backoffDelay(this.attempts++, this.options.minBackoffMs, this.options.maxBackoffMs)
    this._setStatus({ state: 'offline', synced: false, transport: null, reason, retryInMs: delay })
    clearTimeout(this._retryTimer)
    this._retryTimer = setTimeout(() => this._connectNow(), delay)
  }

  _heartbeat () {
    const live = (this.ws && this.ws.readyState === 1) || (this.es && this.status.synced)
    if (live && Date.now() - this.lastHeard > this.options.silenceMs) {
      // A dead socket may take minutes to report its close: drop it now.
      const ws = this.ws
      const es = this.es
      this.ws = null
      this.es = null
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null
        try { ws.close(4000, 'heartbeat timeout') } catch {}
      }
      if (es) es.close()
      this._retry('heartbeat timeout')
    }
  }

  // --- WebSocket transport -------------------------------------------------------------------

  _connectWs () {
    const token = this.options.token ? `&token=${encodeURIComponent(this.options.token)}` : ''
    let ws
    try {
      ws = new this.WebSocket(`${this.urls.ws}/ws/${this.doc.name}?tandem=1${token}`)
    } catch (err) {
      this.wsFailures++
      this._retry('websocket refused')
      return
    }
    ws.binaryType = 'arraybuffer'
    this.ws = ws
    let opened = false
    this._setStatus({ state: 'connecting', synced: false, transport: 'websocket', reason: undefined })
    ws.onopen = () => {
      opened = true
      this.attempts = 0
      this.wsFailures = 0
      this.lastHeard = Date.now()
      this.sent = []
      this._setStatus({ state: 'connected', synced: false, transport: 'websocket' })
      ws.send(syncStep1Frame(this.doc._doc.stateVector()))
      this.doc._bumpPresence()
      const presence = this.doc._localAwareness()
      if (presence) ws.send(awarenessFrame(presence))
    }
    ws.onmessage = (event) => {
      this.lastHeard = Date.now()
      if (typeof event.data === 'string') return
      this._frame(ws, new Uint8Array(event.data))
    }
    ws.onclose = (event) => {
      if (this.ws !== ws) return
      this.ws = null
      if (!opened) this.wsFailures++
      if (event.code >= 4400 && event.code < 4500) this.emit('error', { code: event.code, reason: event.reason })
      this._retry(opened ? `closed (${event.code})` : 'cannot connect')
    }
    ws.onerror = () => {}
  }

  _frame (ws, frame) {
    let messages
    try {
      messages = decodeFrame(frame)
    } catch (err) {
      this.emit('error', { code: 'decode', reason: String(err) })
      return
    }
    for (const m of messages) {
      switch (m.type) {
        case 'sync-step1':
          ws.send(syncStep2Frame(this.doc._doc.diff(m.payload)))
          this.sent.push(this.seq)
          break
        case 'sync-step2':
          this.doc._applyRemote(m.payload, undefined)
          if (!this.status.synced) {
            this._setStatus({ synced: true })
            this.emit('synced')
            this._sendRequests()
          }
          break
        case 'update':
          this.doc._applyRemote(m.payload, undefined)
          break
        case 'awareness':
          this.doc._applyAwareness(m.payload)
          break
        case 'query-awareness': {
          const presence = this.doc._localAwareness()
          if (presence) ws.send(awarenessFrame(presence))
          break
        }
        case 'ack':
          this._acked(m.count)
          break
        case 'field-result':
          this.doc._fieldResult(m.request, m.accepted, m.version, JSON.parse(m.value))
          break
        case 'permission-denied':
          this.emit('error', { code: 'permission-denied', reason: m.reason })
          break
      }
    }
  }

  _acked (count) {
    const mark = this.sent[count - 1]
    if (mark !== undefined) this._release(mark)
  }

  // Every pending edit up to `mark` is durable on the server. It leaves the offline queue with
  // the next state save, which caches a state holding it.
  _release (mark) {
    const done = this.pending.filter((p) => p.seq <= mark)
    if (done.length === 0) return
    this.pending = this.pending.filter((p) => p.seq > mark)
    if (this.store) {
      this.released.push(...done)
      this._scheduleSave()
    }
    this._emitStatus()
    if (this.pending.length === 0) this.emit('acknowledged')
  }

  // --- SSE + HTTP transport ------------------------------------------------------------------

  _authHeaders () {
    return this.options.token ? { Authorization: `Bearer ${this.options.token}` } : {}
  }

  async _connectSse () {
    const attempt = ++this._probe
    this._setStatus({ state: 'connecting', synced: false, transport: 'sse', reason: undefined })
    // Send our whole state first: it carries any offline edits, and creates the document on
    // the server if it does not exist yet (the event stream of an unknown document is a 404).
    const mark = this.seq
    let posted = false
    try {
      const res = await this.fetch(`${this.urls.http}/docs/${this.doc.name}/update`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/octet-stream', ...this._authHeaders() },
        body: this.doc.encodeState()
      })
      posted = res.ok
    } catch {}
    if (attempt !== this._probe || this.stopped || this.ws || this.es || this.hiddenClosed) return
    if (!posted) {
      this.wsFailures = this.options.fallbackAfter - 1
      this._retry('event stream failed')
      return
    }
    this._release(mark)
    const token = this.options.token ? `&token=${encodeURIComponent(this.options.token)}` : ''
    const es = new this.EventSource(`${this.urls.http}/docs/${this.doc.name}/events?format=yjs${token}`)
    this.es = es
    es.addEventListener('snapshot', (event) => {
      this.lastHeard = Date.now()
      const data = JSON.parse(event.data)
      const update = fromBase64(data.update ?? '')
      if (update.length) this.doc._applyRemote(update, undefined)
      if (!this.status.synced) {
        this.attempts = 0
        // What the server lacks: our state minus the snapshot's.
        const server = new Document(0)
        if (update.length) server.applyUpdate(update, undefined)
        const missing = this.doc._doc.diff(server.stateVector())
        server.free()
        // An empty update is two bytes (no structs, no deletions).
        if (missing.length > 2) this._post(missing, this.seq)
        this._setStatus({ state: 'connected', synced: true, transport: 'sse' })
        this.emit('synced')
        this._sendRequests()
      }
    })
    es.addEventListener('update', (event) => {
      this.lastHeard = Date.now()
      const data = JSON.parse(event.data)
      this.doc._applyRemote(fromBase64(data.update), data.author ?? undefined)
    })
    es.onmessage = () => { this.lastHeard = Date.now() }
    es.onerror = () => {
      if (this.es !== es) return
      // Try one WebSocket next, then come back here.
      this.es = null
      es.close()
      this.wsFailures = this.options.fallbackAfter - 1
      this._retry('event stream failed')
    }
  }

  // POSTs an update; when durable, every pending edit up to `mark` is released.
  _post (update, mark) {
    this._postQueue = (this._postQueue ?? Promise.resolve()).then(async () => {
      if (!this.es) return
      const res = await this.fetch(`${this.urls.http}/docs/${this.doc.name}/update`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/octet-stream', ...this._authHeaders() },
        body: update
      })
      if (res.ok) this._release(mark)
      else this.emit('error', { code: res.status, reason: await res.text() })
    }).catch((err) => this.emit('error', { code: 'network', reason: String(err) }))
  }

  async _put (r) {
    const headers = { 'Content-Type': 'application/json', ...this._authHeaders() }
    if (r.expected === '') headers['If-None-Match'] = '*'
    else headers['If-Match'] = `"${r.expected}"`
    const url = `${this.urls.http}/docs/${this.doc.name}/fields/${encodeURIComponent(r.name)}`
    try {
      const res = await this.fetch(url, {
        method: r.deleted ? 'DELETE' : 'PUT',
        headers,
        body: r.deleted ? undefined : JSON.stringify(r.value ?? null)
      })
      const body = await res.json().catch(() => ({}))
      if (res.ok) this.doc._fieldResult(r.request, true, body.version ?? '', r.deleted ? null : body.value)
      else if (res.status === 412) this.doc._fieldResult(r.request, false, body.current?.version ?? '', body.current?.value ?? null)
      else r.sent = false
    } catch {
      r.sent = false
    }
  }

  // --- local changes -------------------------------------------------------------------------

  _localUpdate (update) {
    const entry = { seq: ++this.seq, update, key: Promise.resolve(null), stored: false }
    if (this.store) {
      entry.key = this.store.addPending(update).then(
        (key) => { entry.stored = true; this._emitStatus(); return key },
        (err) => { console.warn('tandem: could not keep an edit on this device', err); return null })
    }
    this.pending.push(entry)
    if (this.tabs) this.tabs.sendUpdate(update, this.doc.user.id)
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(updateFrame(update))
      this.sent.push(entry.seq)
    } else if (this.es && this.status.synced) {
      this._post(update, entry.seq)
    }
    this._emitStatus()
  }

  _localAwareness (payload) {
    if (!payload) return
    if (this.ws && this.ws.readyState === 1) this.ws.send(awarenessFrame(payload))
    if (this.tabs) this.tabs.sendAwareness(payload)
  }

  // Sends conditional register writes not yet sent on this connection.
  _sendRequests () {
    if (!this.status.synced) return
    for (const r of this.doc._unsentRequests()) {
      if (this.ws && this.ws.readyState === 1) {
        r.sent = true
        this.ws.send(setFieldFrame(r.request, r.name, JSON.stringify(r.value ?? null), r.expected, r.deleted))
      } else if (this.es) {
        r.sent = true
        this._put(r)
      }
    }
  }

  // --- state cache ---------------------------------------------------------------------------

  _scheduleSave () {
    if (!this.store || this._saveTimer) return
    this._saveTimer = setTimeout(() => this._saveNow(), this.options.saveStateMs)
  }

  _saveNow () {
    clearTimeout(this._saveTimer)
    this._saveTimer = null
    if (!this.store) return
    const state = this.doc.encodeState()
    const released = this.released
    this.released = []
    Promise.all(released.map((p) => p.key))
      .then((keys) => this.store.saveState(state, keys.filter((k) => k !== null)))
      .catch((err) => console.warn('tandem: could not cache the document', err))
  }

  // --- browser events ------------------------------------------------------------------------

  _listen () {
    const win = globalThis.window
    const doc = globalThis.document
    if (!win || !win.addEventListener) return
    this._onOffline = () => this._close('browser offline')
    this._onOnline = () => {
      this.attempts = 0
      this._connectNow()
    }
    this._onVisibility = () => {
      if (doc.visibilityState === 'hidden') {
        this.doc.presence.setViewing(false)
        this._saveNow()
        this._hiddenTimer = setTimeout(() => {
          this.hiddenClosed = true
          this._close('tab hidden')
        }, this.options.hiddenCloseMs)
      } else {
        clearTimeout(this._hiddenTimer)
        this.doc.presence.setViewing(true)
        if (this.hiddenClosed) {
          this.hiddenClosed = false
          this.attempts = 0
          this._connectNow()
        }
      }
    }
    this._onPageHide = () => {
      this._saveNow()
      const leave = this.doc._leave()
      if (!leave) return
      if (this.ws && this.ws.readyState === 1) this.ws.send(awarenessFrame(leave))
      if (this.tabs) this.tabs.sendAwareness(leave)
    }
    // Back from the back/forward cache: present again.
    this._onPageShow = (event) => {
      if (event.persisted) this.doc._rejoin()
    }
    win.addEventListener('offline', this._onOffline)
    win.addEventListener('online', this._onOnline)
    win.addEventListener('pagehide', this._onPageHide)
    win.addEventListener('pageshow', this._onPageShow)
    doc?.addEventListener('visibilitychange', this._onVisibility)
  }

  _unlisten () {
    const win = globalThis.window
    if (!win || !this._onOffline) return
    win.removeEventListener('offline', this._onOffline)
    win.removeEventListener('online', this._onOnline)
    win.removeEventListener('pagehide', this._onPageHide)
    win.removeEventListener('pageshow', this._onPageShow)
    globalThis.document?.removeEventListener('visibilitychange', this._onVisibility)
  }

  // --- status --------------------------------------------------------------------------------

  _setStatus (patch) {
    this.status = { ...this.status, ...patch, ...this._counts() }
    if (!('retryInMs' in patch)) delete this.status.retryInMs
    this._emitStatus(true)
  }

  _counts () {
    let unsaved = 0
    for (const p of this.pending) if (!p.stored) unsaved++
    for (const p of this.released) if (!p.stored) unsaved++
    return { unacknowledged: this.pending.length, unsaved }
  }

  _emitStatus (force) {
    const next = { ...this.status, ...this._counts() }
    const key = JSON.stringify(next)
    if (!force && key === this._statusKey) return
    this._statusKey = key
    this.status = next
    this.emit('status', next)
    this.doc.emit('status', next)
  }
}
