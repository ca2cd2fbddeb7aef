// TandemDoc: one document as an application sees it — text fields, registers (with optimistic
// conditional writes), per-user undo, presence — over the wasm bindings. It does no I/O: a
// Provider (provider.js) moves its updates to and from the server and other tabs.
import { Document, Presence, updateClient } from './tandem_wasm.js'
import { Emitter } from './emitter.js'

const TICK_MS = 1000

function randomClientId () {
  const buf = new Uint32Array(1)
  globalThis.crypto.getRandomValues(buf)
  return buf[0]
}

// A text field. Offsets are UTF-16 code units, as in JavaScript strings.
export class TextField {
  constructor (doc, name) {
    this.doc = doc
    this.name = name
  }

  toString () {
    return this.doc._doc.text(this.name) ?? ''
  }

  get length () {
    return this.doc._doc.textLength(this.name)
  }

  insert (index, text) {
    this.doc._local((d, user) => d.insert(user, this.name, index, text))
  }

  delete (index, length) {
    this.doc._local((d, user) => d.delete(user, this.name, index, length))
  }

  // Replaces `deleteCount` units at `index` with `text`, as one edit.
  edit (index, deleteCount, text) {
    this.doc._local((d, user) => d.edit(user, this.name, index, deleteCount, text))
  }

  // fn({field, delta, author, local}) for every change; returns an unsubscribe function.
  observe (fn) {
    return this.doc.on('text', (change) => {
      if (change.field === this.name) fn(change)
    })
  }
}

// A last-write-wins register.
export class Field {
  constructor (doc, name) {
    this.doc = doc
    this.name = name
  }

  // The value shown now: an optimistic conditional write's value while it is in flight.
  get () {
    const pending = this.doc._overlay.get(this.name)
    if (pending) return pending.deleted ? undefined : pending.value
    return this.doc._doc.field(this.name)?.value
  }

  // {value, version, author, at} of the winning write known here, or undefined.
  state () {
    return this.doc._doc.field(this.name)
  }

  get version () {
    return this.state()?.version ?? ''
  }

  // True while a conditional write of this register waits for the server.
  get pending () {
    return this.doc._overlay.has(this.name)
  }

  // set(value): a last-write-wins write, applied at once.
  // set(value, {ifVersion}): a conditional write decided by the server. The value shows at once;
  // the promise resolves to {accepted, version, value} and, when the server rejects it, the
  // value rolls back and the document emits 'conflict'.
  set (value, options) {
    if (options && options.ifVersion !== undefined) {
      return this.doc._conditional(this.name, value, options.ifVersion, false)
    }
    this.doc._local((d, user) => d.setField(user, this.name, value))
    return undefined
  }

  delete (options) {
    if (options && options.ifVersion !== undefined) {
      return this.doc._conditional(this.name, undefined, options.ifVersion, true)
    }
    this.doc._local((d, user) => d.deleteField(user, this.name))
    return undefined
  }

  // fn({name, value, author, local}) whenever the shown value changes.
  observe (fn) {
    return this.doc.on('field', (change) => {
      if (change.name === this.name) fn(change)
    })
  }
}

// The local user's presence and everyone else's.
export class PresenceView {
  constructor (doc) {
    this.doc = doc
  }

  setCursor (field, anchor, head = anchor) {
    this.doc._presenceChange((p, now) => p.setCursor(field, anchor, head, now))
  }

  clearCursor (field) {
    this.doc._presenceChange((p, now) => p.clearCursor(field, now))
  }

  // The field being typed in, or null when the user stopped typing.
  setTyping (field) {
    this.doc._presenceChange((p, now) => p.setTyping(field ?? undefined, now))
  }

  setViewing (viewing) {
    this.doc._presenceChange((p, now) => p.setViewing(viewing, now))
  }

  // [{userId, name, color, clients, lastActiveMs}], one entry per user, the local user included.
  viewers () {
    return this.doc._presence.viewers(Date.now())
  }

  // [{userId, name, color, field, clients}]; pass a field to filter.
  typing (field) {
    const all = this.doc._presence.typing(Date.now())
    return field === undefined ? all : all.filter((t) => t.field === field)
  }

  // Remote selections in `field`: [{clientId, user: {id, name, color}, anchor, head}].
  cursors (field) {
    return this.doc._presence.cursors(field)
  }

  // fn() whenever viewers, typing or cursors may have changed.
  observe (fn) {
    return this.doc.on('presence', fn)
  }
}

// Events: 'text', 'field', 'presence', 'conflict', 'status' (from the provider), 'update' and
// 'awareness' (local bytes for providers), 'field-request' (conditional writes for providers).
export class TandemDoc extends Emitter {
  constructor (name, { user, clientId = randomClientId() } = {}) {
    super()
    if (!user || !user.id) throw new Error('tandem: a user with an id is required')
    this.name = name
    this.user = { id: String(user.id), name: user.name ?? String(user.id), color: user.color ?? '#6b7280' }
    this._doc = new Document(clientId)
    this._presence = new Presence(this._doc)
    this._presence.setUser(this.user.id, this.user.name, this.user.color, Date.now())
    this._overlay = new Map() // register name -> in-flight conditional write
    this._requests = new Map() // request id -> {name, value, expected, deleted, resolve, sent}
    this._nextRequest = 1
    this._typingKey = ''
    this.presence = new PresenceView(this)
    this._ticker = setInterval(() => this._tick(), TICK_MS)
    if (this._ticker.unref) this._ticker.unref()
  }

  get clientId () {
    return this._doc.clientId
  }

  text (name) {
    return new TextField(this, name)
  }

  field (name) {
    return new Field(this, name)
  }

  // {name: {value, version, author, at}} for every register with a value.
  fields () {
    return this._doc.fields()
  }

  undo () {
    this._doc.setTime(Date.now())
    const update = this._doc.undo(this.user.id)
    if (update) this._emitLocal(update)
    this._flush(true)
    return update !== undefined
  }

  redo () {
    this._doc.setTime(Date.now())
    const update = this._doc.redo(this.user.id)
    if (update) this._emitLocal(update)
    this._flush(true)
    return update !== undefined
  }

  canUndo () {
    return this._doc.canUndo(this.user.id)
  }

  canRedo () {
    return this._doc.canRedo(this.user.id)
  }

  // Ends the current undo step (e.g. on blur), so the next edit is undone separately.
  stopCapturing () {
    this._doc.stopCapturing(this.user.id)
  }

  encodeState () {
    return this._doc.encodeState()
  }

  destroy () {
    clearInterval(this._ticker)
    for (const r of this._requests.values()) r.resolve({ accepted: false, cancelled: true, version: '', value: undefined })
    this._requests.clear()
    this._overlay.clear()
  }

  // --- used by providers -------------------------------------------------------------------

  _local (mutate) {
    this._doc.setTime(Date.now())
    const update = mutate(this._doc, this.user.id)
    this._emitLocal(update)
    this._flush(true)
  }

  _emitLocal (update) {
    this.emit('update', update)
  }

  // Applies an update from the server, another tab or storage; author when known.
  _applyRemote (update, author) {
    if (author === undefined || author === null) {
      const client = updateClient(update)
      author = client === undefined ? undefined : this._presence.userOf(client)
    }
    const changed = this._doc.applyUpdate(update, author ?? undefined)
    this._flush(false)
    return changed
  }

  _applyAwareness (payload) {
    if (this._presence.applyUpdate(payload, Date.now())) this.emit('presence')
  }

  // Before announcing ourselves on a new connection: the server marked our state removed when
  // the last connection closed, with our clock + 1. Peers only accept a newer clock, so the
  // state is republished twice to come out ahead of that removal.
  _bumpPresence () {
    if (this._left) return
    const now = Date.now()
    this._presence.renew(now)
    this._presence.renew(now)
  }

  _localAwareness () {
    return this._left ? undefined : this._presence.localUpdate()
  }

  _removePeers (keep) {
    const gone = this._presence.remoteClients().filter((c) => !keep.has(c))
    if (gone.length && this._presence.removeClients(gone, Date.now())) this.emit('presence')
  }

  // The user leaves (the page goes away): returns the awareness payload announcing it.
  _leave () {
    if (this._left) return undefined
    this._left = true
    return this._presence.leave(Date.now())
  }

  _rejoin () {
    if (!this._left) return
    this._left = false
    this._presenceChange((p, now) => p.setUser(this.user.id, this.user.name, this.user.color, now))
  }

  _presenceChange (change) {
    // After leaving, the local state is gone: nothing to change or publish.
    if (this._left) return
    change(this._presence, Date.now())
    this.emit('awareness', this._presence.localUpdate())
    this.emit('presence')
  }

  _tick () {
    const now = Date.now()
    let changed = this._presence.expire(now).length > 0
    const key = JSON.stringify(this._presence.typing(now).map((t) => [t.userId, t.field, t.clients]))
    if (key !== this._typingKey) {
      this._typingKey = key
      changed = true
    }
    if (!this._left && this._presence.renewalDue(now)) {
      this._presence.renew(now)
      this.emit('awareness', this._presence.localUpdate())
    }
    if (changed) this.emit('presence')
  }

  _flush (local) {
    for (const c of this._doc.takeChanges()) {
      if (c.kind === 'text') {
        this.emit('text', { field: c.field, delta: c.delta, author: c.author ?? undefined, local })
      } else {
        const pending = this._overlay.get(c.name)
        // An accepted write waits for the server's update before its overlay goes.
        if (pending && pending.settledVersion === undefined) continue
        if (pending) this._overlay.delete(c.name)
        this.emit('field', { name: c.name, value: c.value?.value, state: c.value ?? undefined, author: c.author ?? undefined, local })
      }
    }
  }

  _conditional (name, value, expected, deleted) {
    const request = this._nextRequest++
    return new Promise((resolve) => {
      const entry = { request, name, value, expected: String(expected), deleted, resolve, sent: false }
      this._requests.set(request, entry)
      this._overlay.set(name, entry)
      this.emit('field', { name, value: deleted ? undefined : value, author: this.user.id, local: true, optimistic: true })
      this.emit('field-request', entry)
    })
  }

  // Unanswered conditional writes not yet sent on the current connection.
  _unsentRequests () {
    return [...this._requests.values()].filter((r) => !r.sent)
  }

  // A connection was lost: answers to requests sent on it will never come; send them again.
  _resetRequests () {
    for (const r of this._requests.values()) r.sent = false
  }

  // The server's answer to conditional write `request`: current value given as a JS value.
  _fieldResult (request, accepted, version, current) {
    const entry = this._requests.get(request)
    if (!entry) return
    this._requests.delete(request)
    if (this._overlay.get(entry.name) === entry) {
      if (accepted && this._doc.field(entry.name)?.version !== version && !entry.deleted) {
        entry.settledVersion = version
      } else {
        this._overlay.delete(entry.name)
      }
    }
    const shown = this.field(entry.name).get()
    if (!accepted) {
      this.emit('conflict', {
        name: entry.name,
        attempted: entry.deleted ? undefined : entry.value,
        expected: entry.expected,
        current: current === null ? undefined : current,
        version
      })
    }
    this.emit('field', { name: entry.name, value: shown, state: this.field(entry.name).state(), author: undefined, local: false, settled: true })
    entry.resolve({ accepted, version, value: current === null ? undefined : current })
  }
}
