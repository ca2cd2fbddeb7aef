// The Inbox client's rules under Node, with a scripted API (fetch) and event stream
// (EventSource): what counts as new, catching up after a reconnect, backoff, the end on 4401,
// and the mention markup. The demo test (demo.test.mjs, "the bell") runs it against the server.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { repo } from './harness.mjs'

const pkg = join(repo, 'wasm', 'pkg')
const { Inbox, mentionMarkup, insertMention, parseMentions } = await import(join(pkg, 'index.js'))

// A scripted notifications API for one user.
class FakeApi {
  constructor () {
    this.items = [] // newest first
    this.read = new Set()
    this.status = 200 // what GET answers
    this.streams = []
    this.requests = []
    const api = this
    this.EventSource = class {
      constructor (url) {
        this.url = url
        this.readyState = 0
        this.listeners = {}
        this.closed = false
        api.streams.push(this)
        setTimeout(() => {
          if (this.closed) return
          if (api.status !== 200) {
            this.readyState = 2
            this.onerror?.()
            return
          }
          this.readyState = 1
          this.onopen?.()
          this.send('unread', { unread: api.unread() })
        }, 1)
      }

      addEventListener (type, fn) { (this.listeners[type] ??= []).push(fn) }
      close () { this.closed = true; this.readyState = 2 }
      send (type, data, id) {
        for (const fn of this.listeners[type] ?? []) fn({ data: JSON.stringify(data), lastEventId: String(id ?? '') })
      }

      // The connection drops; `fatal` as after a non-200 answer (the browser gives up).
      fail (fatal) {
        this.readyState = fatal ? 2 : 0
        this.onerror?.()
      }
    }
    this.fetch = async (url, init = {}) => {
      const u = new URL(url)
      this.requests.push({ method: init.method, path: u.pathname + u.search, headers: init.headers, body: init.body })
      if (this.status !== 200) return json(this.status, { error: { code: 'refused', message: `status ${this.status}` } })
      if (u.pathname === '/me/notifications') {
        const limit = Number(u.searchParams.get('limit'))
        const before = u.searchParams.has('before') ? Number(u.searchParams.get('before')) : Infinity
        const older = this.items.filter((n) => n.id < before)
        const page = older.slice(0, limit).map((n) => ({ ...n, read: this.read.has(n.id) }))
        const next = older.length > limit ? page[page.length - 1].id : null
        return json(200, { notifications: page, unread: this.unread(), next })
      }
      if (u.pathname === '/me/notifications/read') {
        const body = JSON.parse(init.body)
        for (const n of this.items) if (body.all || body.ids.includes(n.id)) this.read.add(n.id)
        this.stream?.send('unread', { unread: this.unread() })
        return json(200, { unread: this.unread() })
      }
      return json(404, {})
    }
  }

  unread () { return this.items.filter((n) => !this.read.has(n.id)).length }
  get stream () { return this.streams[this.streams.length - 1] }

  // A new notification: stored, then streamed on the open stream (when `live`). As the server
  // does, the stream says `unread` when it starts and after reads, not after a notification.
  add (id, live = true) {
    const n = { id, type: 'mention', doc: 'task-1', field: 'comment:1', from: 'alice', at: 1000 + id, excerpt: `n${id}`, read: false }
    this.items.unshift(n)
    if (live && this.stream && !this.stream.closed) this.stream.send('notification', n, id)
    return n
  }
}

function json (status, body) {
  return { ok: status >= 200 && status < 300, status, json: async () => body }
}

function until (check, what, ms = 3000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now()
    const poll = () => {
      if (check()) return resolve()
      if (Date.now() - t0 > ms) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(poll, 2)
    }
    poll()
  })
}

function inboxOn (api, options = {}) {
  const inbox = new Inbox({ url: 'http://tandem.test', token: 't0k', fetch: api.fetch, EventSource: api.EventSource, minBackoffMs: 10, maxBackoffMs: 40, ...options })
  const seen = []
  inbox.on('notification', (n) => seen.push(n.id))
  return { inbox, seen }
}

test('the first page sets the mark; only newer notifications are announced, once', async () => {
  const api = new FakeApi()
  api.add(1, false)
  api.add(2, false)
  const { inbox, seen } = inboxOn(api)
  await until(() => inbox.status.state === 'live', 'live')
  assert.deepEqual(inbox.notifications.map((n) => n.id), [2, 1])
  assert.equal(inbox.unread, 2)
  assert.deepEqual(seen, [], 'what was there before is not new')
  const stream = api.stream
  assert.equal(stream.url, 'http://tandem.test/me/notifications/events?since=2&token=t0k')
  api.add(3)
  assert.deepEqual(seen, [3])
  assert.equal(inbox.unread, 3)
  // The same event again (a resumed stream overlapping the catch-up read) changes nothing.
  stream.send('notification', api.items[0], 3)
  assert.deepEqual(seen, [3])
  assert.equal(inbox.unread, 3, 'counted once')
  assert.deepEqual(inbox.notifications.map((n) => n.id), [3, 2, 1])
  // Requests carry the token as a bearer token.
  assert.equal(api.requests[0].headers.Authorization, 'Bearer t0k')
  inbox.close()
})

test('marking read updates the flags and the count', async () => {
  const api = new FakeApi()
  for (const id of [1, 2, 3]) api.add(id, false)
  const { inbox } = inboxOn(api)
  await until(() => inbox.status.state === 'live', 'live')
  const counts = []
  inbox.on('unread', (n) => counts.push(n))
  assert.equal(await inbox.markRead([2]), 2)
  assert.equal(inbox.notifications.find((n) => n.id === 2).read, true)
  assert.deepEqual(JSON.parse(api.requests.at(-1).body), { ids: [2] })
  assert.equal(await inbox.markAllRead(), 0)
  assert.deepEqual(JSON.parse(api.requests.at(-1).body), { all: true })
  assert.ok(inbox.notifications.every((n) => n.read))
  assert.deepEqual(counts, [2, 0])
  inbox.close()
})

test('read on another device: the count and the flags follow; a refused mark is undone', async () => {
  const api = new FakeApi()
  for (const id of [1, 2]) api.add(id, false)
  const { inbox } = inboxOn(api)
  await until(() => inbox.status.state === 'live', 'live')
  const flag = (id) => inbox.notifications.find((n) => n.id === id).read
  api.read.add(2)
  api.stream.send('unread', { unread: api.unread() })
  assert.equal(inbox.unread, 1)
  await until(() => flag(2), 'the flags read again')
  assert.equal(flag(1), false)
  api.status = 500
  await assert.rejects(inbox.markRead([1]), { status: 500 })
  assert.equal(flag(1), false, 'shown unread again')
  assert.equal(inbox.unread, 1)
  inbox.close()
})

test('older pages load with before/next', async () => {
  const api = new FakeApi()
  for (let id = 1; id <= 5; id++) api.add(id, false)
  const { inbox, seen } = inboxOn(api, { pageSize: 2 })
  await until(() => inbox.status.state === 'live', 'live')
  assert.deepEqual(inbox.notifications.map((n) => n.id), [5, 4])
  assert.equal(inbox.next, 4)
  await inbox.more()
  await inbox.more()
  assert.deepEqual(inbox.notifications.map((n) => n.id), [5, 4, 3, 2, 1])
  assert.equal(inbox.next, null)
  assert.equal(await inbox.more(), null)
  assert.deepEqual(seen, [], 'older pages are not news')
  inbox.close()
})

test('after a failed stream it reconnects with backoff and catches up on what it missed', async () => {
  const api = new FakeApi()
  api.add(1, false)
  const { inbox, seen } = inboxOn(api)
  await until(() => inbox.status.state === 'live', 'live')
  const first = api.stream
  // A drop the browser retries by itself (it resends Last-Event-ID): the inbox waits.
  first.fail(false)
  assert.equal(inbox.status.state, 'connecting')
  assert.equal(api.streams.length, 1)
  // It fails again: the inbox takes over, with backoff.
  api.status = 503
  first.fail(false)
  assert.equal(first.closed, true)
  assert.equal(inbox.status.state, 'offline')
  assert.ok(inbox.status.retryInMs >= 5 && inbox.status.retryInMs <= 10, `first delay ${inbox.status.retryInMs}`)
  await until(() => inbox.status.retryInMs > 10, 'a longer second delay')
  // While it was away two notifications were made; the server comes back.
  api.add(2, false)
  api.add(3, false)
  api.status = 200
  await until(() => inbox.status.state === 'live', 'live again')
  await until(() => seen.length === 2, 'the missed notifications')
  assert.deepEqual(seen, [2, 3])
  assert.equal(inbox.unread, 3)
  assert.equal(api.streams.filter((s) => !s.closed).length, 1, 'one stream open')
  inbox.close()
})

test('a close event with code 4401 ends the inbox; no reconnect with the same token', async () => {
  const api = new FakeApi()
  const { inbox } = inboxOn(api)
  await until(() => inbox.status.state === 'live', 'live')
  const errors = []
  inbox.on('error', (e) => errors.push(e))
  api.stream.send('close', { code: 4401, reason: 'token revoked' })
  assert.equal(inbox.status.state, 'closed')
  assert.deepEqual(errors, [{ code: 4401, reason: 'token revoked' }])
  assert.equal(api.stream.closed, true)
  const requests = api.requests.length
  await new Promise((resolve) => setTimeout(resolve, 100))
  assert.equal(api.streams.length, 1)
  assert.equal(api.requests.length, requests)
  inbox.connect()
  assert.equal(api.streams.length, 1, 'connect() after the end does nothing')
})

test('a refused token (401) ends the inbox instead of retrying', async () => {
  const api = new FakeApi()
  api.status = 401
  const { inbox } = inboxOn(api)
  await until(() => inbox.status.state === 'closed', 'closed')
  assert.equal(inbox.status.code, 4401)
  assert.equal(api.streams.length, 0)
  await new Promise((resolve) => setTimeout(resolve, 60))
  assert.equal(api.requests.length, 1)
})

test('mentions are written and read in the react-mentions markup', () => {
  assert.equal(mentionMarkup({ id: 'bob', name: 'Bob' }), '@[Bob](bob)')
  assert.equal(mentionMarkup({ id: 'u-7', name: 'Ada [admin]' }), '@[Ada admin](u-7)')
  assert.equal(mentionMarkup({ id: 'u-7' }), '@[u-7](u-7)')
  assert.throws(() => mentionMarkup({ id: 'a b', name: 'A' }), TypeError)
  assert.throws(() => mentionMarkup({ id: 'x)y', name: 'A' }), TypeError)
  assert.throws(() => mentionMarkup({ id: 'x[y', name: 'A' }), TypeError)
  const inserted = []
  const field = { insert: (index, text) => inserted.push([index, text]) }
  assert.equal(insertMention(field, 6, { id: 'bob', name: 'Bob' }), 17)
  assert.deepEqual(inserted, [[6, '@[Bob](bob)']])
  assert.deepEqual(parseMentions('Hi @[Bob](bob) and @[Ada L](u-1)!'), [
    { index: 3, length: 11, id: 'bob', name: 'Bob' },
    { index: 19, length: 13, id: 'u-1', name: 'Ada L' }
  ])
  assert.deepEqual(parseMentions('@[not](a mention) @Bob'), [])
})
