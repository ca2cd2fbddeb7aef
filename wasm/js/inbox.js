// Inbox: the notifications of the token's user (mentions, assignments, replies, due dates),
// kept live.
//
//   const inbox = new Inbox({ url, token })
//   inbox.on('unread', (n) => bell.textContent = n)
//   inbox.on('notification', (n) => toast(n.excerpt))
//   await inbox.markRead([n.id])
//
// - HTTP: GET /me/notifications (pages, newest first) and POST /me/notifications/read.
// - Live: an EventSource on /me/notifications/events (the token as ?token=). The browser's own
//   reconnect resends Last-Event-ID, so a short drop resumes without gap; when the stream fails
//   again the inbox closes it and reconnects with exponential backoff and jitter.
// - Catch-up: every (re)connection reads the first page, then opens the stream with
//   ?since=<newest id read>, from which the server replays; whatever arrived while disconnected
//   is found, and known ids are never announced twice.
// - A `close` event with code 4401 (token revoked or expired), or a 401 from the API, ends the
//   inbox for good: reconnecting with the same token cannot succeed. Open a new one.
//
// Plain JavaScript, not wasm: it parses JSON and keeps a list, which the browser does natively,
// and the wasm module stays the size it was.
import { Emitter } from './emitter.js'
import { backoffDelay } from './backoff.js'

const INBOX_DEFAULTS = {
  pageSize: 20,
  minBackoffMs: 500,
  maxBackoffMs: 30000,
  // Stream errors in a row the browser may retry on its own (with Last-Event-ID) before the
  // inbox takes over with backoff.
  nativeRetries: 1
}

const CLOSED = 2 // EventSource.CLOSED

export class InboxError extends Error {
  constructor (status, code, message) {
    super(message)
    this.name = 'InboxError'
    this.status = status
    this.code = code
  }
}

export class Inbox extends Emitter {
  constructor (options = {}) {
    super()
    this.options = { ...INBOX_DEFAULTS, ...options }
    const url = options.url ?? globalThis.location?.origin
    if (!url) throw new Error('tandem: no server url given')
    this.base = url.replace(/^ws(s?):/, 'http$1:').replace(/\/+$/, '')
    this.token = options.token ?? null
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis)
    this.EventSource = options.EventSource ?? globalThis.EventSource
    this.notifications = [] // loaded so far, newest first
    this.unread = 0
    this.next = null // the `before` of the page after the loaded ones; null at the end
    this.status = { state: 'idle' }
    this.lastId = null // greatest id seen; notifications above it are new
    this._byId = new Map()
    this._es = null
    this._attempts = 0
    this._errors = 0
    this._connection = 0 // bumped by every (re)connection and close: stale work stops
    this._unreadEpoch = 0 // bumped by every live change of the count
    this._retryTimer = null
    this._refreshTimer = null
    this._ended = false
    this._olderRead = false
    if (options.connect !== false) this.connect()
  }

  // One page, newest first: {notifications, unread, next}. Its items join `notifications`.
  async list ({ limit = this.options.pageSize, before } = {}) {
    const query = new URLSearchParams({ limit: String(limit) })
    if (before !== undefined && before !== null) query.set('before', String(before))
    const epoch = this._unreadEpoch
    const page = await this._request('GET', `/me/notifications?${query}`)
    const newest = before === undefined || before === null
    this._merge(page.notifications ?? [], newest)
    if (newest && this.lastId === null) this.lastId = 0
    // `next` follows the oldest page read; re-reading the first one keeps it.
    if (!newest || !this._olderRead) this.next = page.next ?? null
    if (!newest) this._olderRead = true
    if (epoch === this._unreadEpoch) this._setUnread(page.unread)
    this.emit('change')
    return page
  }

  // The page after the loaded ones, or null when everything is loaded.
  async more (limit) {
    if (this.next === null) return null
    return this.list({ limit, before: this.next })
  }

  // Marks notifications read; resolves to the unread count.
  // Shown read at once; when the server refuses, shown unread again.
  async markRead (ids) {
    ids = [...ids]
    if (ids.length === 0) return this.unread
    return this._markRead({ ids }, ids.map((id) => this._byId.get(id)).filter(Boolean))
  }

  async markAllRead () {
    return this._markRead({ all: true }, this.notifications)
  }

  connect () {
    if (this._ended || this._es || this._retryTimer || this.status.state === 'connecting') return
    this._connect()
  }

  // Stops the live stream (the inbox can connect() again).
  disconnect () {
    this._stop()
    this._setStatus({ state: 'idle' })
  }

  close () {
    this._stop()
    this._ended = true
    this._setStatus({ state: 'closed', reason: 'closed' })
  }

  // --- connection ----------------------------------------------------------------------------

  async _connect () {
    const connection = ++this._connection
    clearTimeout(this._retryTimer)
    this._retryTimer = null
    this._setStatus({ state: 'connecting' })
    if (!this.EventSource) {
      this._end({ code: 'unsupported', reason: 'no EventSource in this environment' })
      return
    }
    // The first page: sets what counts as new, and tells a refused token from a server down.
    if (!(await this._catchUp(connection))) return
    // From the newest id read: the server replays anything after it. Later drops the browser
    // resumes by itself with Last-Event-ID, which wins over `since`.
    const query = new URLSearchParams({ since: String(this.lastId ?? 0) })
    if (this.token) query.set('token', this.token)
    const es = new this.EventSource(`${this.base}/me/notifications/events?${query}`)
    this._es = es
    es.addEventListener('notification', (event) => {
      const n = parse(event.data)
      if (!n || typeof n.id !== 'number') return
      // The server sends `unread` at the start and after reads; a new notification counts here.
      const fresh = !this._byId.has(n.id) && this.lastId !== null && n.id > this.lastId
      this._merge([n], true)
      if (fresh && !n.read) {
        this._unreadEpoch++
        this._setUnread(this.unread + 1)
      }
      this.emit('change')
    })
    es.addEventListener('unread', (event) => {
      const data = parse(event.data)
      if (!data || typeof data.unread !== 'number') return
      this._unreadEpoch++
      this._setUnread(data.unread)
    })
    es.addEventListener('close', (event) => {
      const data = parse(event.data) ?? {}
      if (data.code === 4401) this._end({ code: 4401, reason: data.reason ?? 'token refused' })
    })
    es.onopen = () => {
      if (this._es !== es) return
      this._attempts = 0
      this._errors = 0
      this._setStatus({ state: 'live' })
    }
    es.onerror = () => {
      if (this._es !== es) return
      this._errors++
      if (es.readyState !== CLOSED && this._errors <= this.options.nativeRetries) {
        // The browser reconnects by itself and resends Last-Event-ID.
        this._setStatus({ state: 'connecting', reason: 'stream interrupted' })
        return
      }
      this._dropStream()
      this._retry('stream failed')
    }
  }

  // Reads the first page; false when this connection should go no further.
  async _catchUp (connection) {
    try {
      await this.list()
      return connection === this._connection
    } catch (err) {
      if (connection !== this._connection) return false
      if (err instanceof InboxError && (err.status === 401 || err.status === 403)) {
        this._end({ code: 4401, reason: err.message })
      } else {
        this._dropStream()
        this._retry(err instanceof InboxError ? `server answered ${err.status}` : 'server unreachable')
      }
      return false
    }
  }

  _retry (reason) {
    if (this._ended) return
    const delay = backoffDelay(this._attempts++, this.options.minBackoffMs, this.options.maxBackoffMs)
    this._setStatus({ state: 'offline', reason, retryInMs: delay })
    clearTimeout(this._retryTimer)
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null
      this._connect()
    }, delay)
  }

  _dropStream () {
    const es = this._es
    this._es = null
    if (es) {
      es.onopen = es.onerror = null
      es.close()
    }
  }

  _stop () {
    this._connection++
    this._dropStream()
    clearTimeout(this._retryTimer)
    clearTimeout(this._refreshTimer)
    this._retryTimer = null
    this._refreshTimer = null
  }

  // The token was refused: no reconnect with it.
  _end (error) {
    if (this._ended) return
    this._stop()
    this._ended = true
    this.emit('error', error)
    this._setStatus({ state: 'closed', reason: error.reason, code: error.code })
  }

  // --- state ---------------------------------------------------------------------------------

  // Adds or updates notifications. Those newer than every one seen before are announced
  // ('notification', oldest first): the stream's, and a catch-up page's after a reconnect. The
  // first page read sets the mark and announces nothing; older pages (`newest` false) leave it.
  _merge (items, newest) {
    if (items.length === 0) return
    const fresh = []
    let top = this.lastId ?? 0
    for (const item of items) {
      if (item.id > top) top = item.id
      const known = this._byId.get(item.id)
      if (known) {
        Object.assign(known, item)
        continue
      }
      const n = { ...item }
      this._byId.set(n.id, n)
      this.notifications.push(n)
      if (this.lastId !== null && n.id > this.lastId) fresh.push(n)
    }
    if (newest || this.lastId !== null) this.lastId = top
    this.notifications.sort((a, b) => b.id - a.id)
    fresh.sort((a, b) => a.id - b.id)
    for (const n of fresh) this.emit('notification', n)
  }

  _setUnread (unread) {
    if (typeof unread !== 'number' || unread === this.unread) return
    this.unread = unread
    this.emit('unread', unread)
    if (unread === 0) {
      let changed = false
      for (const n of this.notifications) if (!n.read) { n.read = true; changed = true }
      if (changed) this.emit('change')
    } else if (unread < this.notifications.filter((n) => !n.read).length) {
      // Fewer unread than shown: read somewhere else (another tab or device). Re-read the flags.
      this._scheduleRefresh()
    }
  }

  _scheduleRefresh () {
    if (this._refreshTimer || this._ended) return
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null
      this.list({ limit: Math.max(this.options.pageSize, Math.min(this.notifications.length, 100)) }).catch(() => {})
    }, 300)
  }

  async _markRead (body, shown) {
    const flipped = shown.filter((n) => !n.read)
    for (const n of flipped) n.read = true
    if (flipped.length) this.emit('change')
    const epoch = this._unreadEpoch
    let res
    try {
      res = await this._request('POST', '/me/notifications/read', body)
    } catch (err) {
      for (const n of flipped) n.read = false
      if (flipped.length) this.emit('change')
      throw err
    }
    if (epoch === this._unreadEpoch) this._setUnread(res.unread)
    return this.unread
  }

  async _request (method, path, body) {
    if (!this.fetch) throw new InboxError(0, 'unsupported', 'no fetch in this environment')
    const headers = { Accept: 'application/json' }
    if (this.token) headers.Authorization = `Bearer ${this.token}`
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    const res = await this.fetch(`${this.base}${path}`, {
      method,
      headers,
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const data = await res.json().catch(() => null)
    if (!res.ok) {
      const code = data?.error?.code ?? data?.code ?? res.status
      const message = data?.error?.message ?? data?.message ?? `HTTP ${res.status}`
      if (res.status === 401) this._end({ code: 4401, reason: message })
      throw new InboxError(res.status, code, message)
    }
    return data ?? {}
  }

  _setStatus (status) {
    this.status = status
    this.emit('status', status)
  }
}

function parse (data) {
  try {
    return JSON.parse(data)
  } catch {
    return null
  }
}
