// The demo page in headless Chromium: two people (browser contexts) co-editing a task card.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { Server, withServerAndChromium, screenshot, uniqueDoc } from './harness.mjs'

const live = withServerAndChromium()

const LIVE = '#connection[data-state="connected"][data-synced="true"]'

async function person (name, doc, query = '') {
  const context = await live.browser.newContext({ viewport: { width: 900, height: 900 } })
  const page = await context.newPage()
  page.on('pageerror', (err) => console.error(`[${name}] page error:`, err))
  await openDemo(page, name, doc, query)
  return { context, page }
}

async function openDemo (page, name, doc, query = '') {
  await page.goto(`${live.server.http}/?doc=${doc}&name=${name}${query}`)
  await page.waitForSelector('#app[data-ready="true"]')
  await page.waitForSelector(LIVE)
}

const text = (page) => page.$eval('#description', (el) => el.value)
const waitText = (page, expected) =>
  page.waitForFunction((t) => document.querySelector('#description').value === t, expected)

test('typing in one context appears in the other with the remote cursor', async () => {
  const doc = uniqueDoc('cursor')
  const a = await person('Alice', doc)
  const b = await person('Bob', doc)
  await a.page.click('#description')
  await a.page.keyboard.type('Ship the offline mode')
  await waitText(b.page, 'Ship the offline mode')
  // Alice's caret is drawn in Bob's editor, labelled with her name, at the end of her text.
  const caret = await b.page.waitForSelector('#description-overlay .caret[data-user="alice"]')
  assert.equal(await caret.textContent(), 'Alice')
  await screenshot(b.page, 'cursor-bob-sees-alice')
  await a.page.keyboard.press('Home')
  await b.page.waitForFunction(() => {
    const caret = document.querySelector('#description-overlay .caret[data-user="alice"]')
    return caret && caret.previousSibling === null
  })
  // Both see each other as viewers.
  await a.page.waitForSelector('#viewers .avatar[data-user="bob"]')
  await b.page.waitForSelector('#viewers .avatar[data-user="alice"]')
  await a.page.fill('#title', 'Offline mode for the mobile app')
  await a.page.press('#title', 'Enter')
  await b.page.waitForFunction(() => document.querySelector('#title').value === 'Offline mode for the mobile app')
  await screenshot(b.page, 'cursor-bob-after-title')
  await a.context.close()
  await b.context.close()
})

test('the typing indicator shows, then clears', async () => {
  const doc = uniqueDoc('typing')
  const a = await person('Alice', doc)
  const b = await person('Bob', doc)
  await a.page.click('#comment')
  await a.page.keyboard.type('Looks good to me')
  await b.page.waitForFunction(() => document.querySelector('#comment-typing').textContent.includes('Alice is typing'))
  await screenshot(b.page, 'typing-bob-sees-alice')
  // Alice stops typing: the indicator clears without her sending anything.
  await b.page.waitForFunction(() => document.querySelector('#comment-typing').textContent === '')
  await a.page.keyboard.press('Enter')
  await b.page.waitForFunction(() => [...document.querySelectorAll('#comments .comment .text')].some((e) => e.textContent === 'Looks good to me'))
  await screenshot(b.page, 'typing-comment-arrived')
  await a.context.close()
  await b.context.close()
})

test('a status change propagates to the other context', async () => {
  const doc = uniqueDoc('status')
  const a = await person('Alice', doc)
  const b = await person('Bob', doc)
  await a.page.selectOption('#status', 'doing')
  await b.page.waitForSelector('#status-pill[data-status="doing"]')
  assert.equal(await b.page.$eval('#status', (el) => el.value), 'doing')
  await screenshot(b.page, 'status-bob')
  await a.context.close()
  await b.context.close()
})

test('undo in A removes only A\'s text', async () => {
  const doc = uniqueDoc('undo')
  const a = await person('Alice', doc)
  const b = await person('Bob', doc)
  await a.page.click('#description')
  await a.page.keyboard.type('Alice wrote this. ')
  await waitText(b.page, 'Alice wrote this. ')
  await b.page.click('#description')
  await b.page.keyboard.press('End')
  await b.page.keyboard.type('Bob wrote that.')
  await waitText(a.page, 'Alice wrote this. Bob wrote that.')
  await a.page.click('#undo')
  await waitText(a.page, 'Bob wrote that.')
  await waitText(b.page, 'Bob wrote that.')
  // Redo brings Alice's text back, again without touching Bob's.
  await a.page.click('#redo')
  await waitText(b.page, 'Alice wrote this. Bob wrote that.')
  await screenshot(a.page, 'undo-alice')
  await a.context.close()
  await b.context.close()
})

test('offline edits survive a reload and arrive when back online', async () => {
  const doc = uniqueDoc('offline')
  const a = await person('Alice', doc)
  await a.page.evaluate(() => navigator.serviceWorker.ready)
  await a.page.click('#description')
  await a.page.keyboard.type('Before. ')
  await a.page.waitForSelector('#connection[data-unacknowledged="0"][data-unsaved="0"]')
  await a.context.setOffline(true)
  await a.page.waitForSelector('#connection[data-state="offline"]')
  await a.page.keyboard.type('Written offline.')
  await a.page.waitForSelector('#connection[data-state="offline"][data-unacknowledged]:not([data-unacknowledged="0"])')
  // Every offline edit is on this device's disk before the page goes away.
  await a.page.waitForSelector('#connection[data-unsaved="0"]')
  assert.match(await a.page.textContent('#connection-detail'), /edits saved on this device/)
  await screenshot(a.page, 'offline-edited')
  await a.page.reload()
  await a.page.waitForSelector('#app[data-ready="true"]')
  // The cached document and the unacknowledged edits are back, still offline.
  assert.equal(await text(a.page), 'Before. Written offline.')
  await a.page.waitForSelector('#connection[data-state="offline"]')
  assert.notEqual(await a.page.$eval('#connection', (el) => el.dataset.unacknowledged), '0')
  await screenshot(a.page, 'offline-reloaded')
  await a.context.setOffline(false)
  await a.page.waitForSelector(`${LIVE}[data-unacknowledged="0"]`)
  const b = await person('Bob', doc)
  assert.equal(await text(b.page), 'Before. Written offline.')
  await a.context.close()
  await b.context.close()
})

test('two tabs of one context stay in sync while the server is stopped', async () => {
  const doc = uniqueDoc('tabs')
  const a = await person('Alice', doc)
  const tab2 = await a.context.newPage()
  await openDemo(tab2, 'Alice', doc)
  try {
    await live.server.stop()
    await a.page.waitForSelector('#connection[data-state="offline"]')
    await tab2.waitForSelector('#connection[data-state="offline"]')
    await a.page.click('#description')
    await a.page.keyboard.type('Server is down, tabs still talk.')
    await waitText(tab2, 'Server is down, tabs still talk.')
    // Presence crosses tabs too: the first tab's caret shows in the second.
    const client = await a.page.evaluate(() => window.tandem.doc.clientId)
    await tab2.waitForSelector(`#description-overlay .caret[data-client="${client}"]`)
    await tab2.selectOption('#status', 'review')
    await a.page.waitForSelector('#status-pill[data-status="review"]')
    await screenshot(tab2, 'tabs-server-stopped')
  } finally {
    if (!live.server.running) await live.server.restart()
  }
  await a.page.waitForSelector(`${LIVE}[data-unacknowledged="0"]`)
  await tab2.waitForSelector(`${LIVE}[data-unacknowledged="0"]`)
  const b = await person('Bob', doc)
  assert.equal(await text(b.page), 'Server is down, tabs still talk.')
  await b.page.waitForSelector('#status-pill[data-status="review"]')
  await a.context.close()
  await b.context.close()
})

test('a conditional status write with a stale version rolls back and fires a conflict event', async () => {
  const doc = uniqueDoc('conflict')
  const a = await person('Alice', doc)
  const b = await person('Bob', doc)
  const stale = await a.page.evaluate(() => window.tandem.doc.field('status').version)
  await b.page.selectOption('#status', 'review')
  await a.page.waitForSelector('#status-pill[data-status="review"]')
  const result = await a.page.evaluate(async (version) => {
    const field = window.tandem.doc.field('status')
    const pending = field.set('done', { ifVersion: version })
    const shown = field.get()
    const shownInUi = document.querySelector('#status').value
    const outcome = await pending
    return { shown, shownInUi, outcome, after: field.get(), conflicts: window.tandem.events.filter((e) => e.type === 'conflict') }
  }, stale)
  assert.equal(result.shown, 'done', 'the optimistic value shows at once')
  assert.equal(result.shownInUi, 'done')
  assert.equal(result.outcome.accepted, false)
  assert.equal(result.outcome.value, 'review')
  assert.equal(result.after, 'review', 'rolled back to the server value')
  assert.equal(result.conflicts.length, 1)
  assert.equal(result.conflicts[0].attempted, 'done')
  assert.equal(result.conflicts[0].current, 'review')
  await a.page.waitForSelector('#status-pill[data-status="review"]')
  await a.page.waitForSelector('.toast')
  await screenshot(a.page, 'conflict-rolled-back')
  // Bob never saw "done".
  assert.equal(await b.page.$eval('#status', (el) => el.value), 'review')
  await a.context.close()
  await b.context.close()
})

test('a hidden tab closes its connection and catches up when visible again', async () => {
  const doc = uniqueDoc('hidden')
  const a = await person('Alice', doc, '&hiddenCloseMs=300')
  const b = await person('Bob', doc)
  const setVisibility = (page, state) => page.evaluate((s) => {
    Object.defineProperty(document, 'visibilityState', { value: s, configurable: true })
    document.dispatchEvent(new Event('visibilitychange'))
  }, state)
  await setVisibility(a.page, 'hidden')
  await a.page.waitForSelector('#connection[data-state="offline"][data-reason="tab hidden"]')
  // Alice is no longer among Bob's viewers; Bob edits while her tab sleeps.
  await b.page.waitForSelector('#viewers .avatar[data-user="alice"]', { state: 'detached' })
  await b.page.click('#description')
  await b.page.keyboard.type('Edited while Alice was away.')
  await setVisibility(a.page, 'visible')
  await a.page.waitForSelector(LIVE)
  await waitText(a.page, 'Edited while Alice was away.')
  await b.page.waitForSelector('#viewers .avatar[data-user="alice"]')
  await a.context.close()
  await b.context.close()
})

test('without WebSockets the client falls back to SSE and HTTP POST', async () => {
  const doc = uniqueDoc('fallback')
  const context = await live.browser.newContext()
  // A network that refuses WebSocket upgrades (as some proxies do).
  await context.addInitScript(() => {
    window.WebSocket = class {
      constructor () { setTimeout(() => { this.onerror?.(new Event('error')); this.onclose?.({ code: 1006, reason: '' }) }, 10) }
      send () {}
      close () {}
    }
  })
  const a = { context, page: await context.newPage() }
  await a.page.goto(`${live.server.http}/?doc=${doc}&name=Alice&minBackoffMs=50&maxBackoffMs=200`)
  await a.page.waitForSelector(`${LIVE}[data-transport="sse"]`)
  const b = await person('Bob', doc)
  await a.page.click('#description')
  await a.page.keyboard.type('Sent over HTTP.')
  await waitText(b.page, 'Sent over HTTP.')
  await a.page.waitForSelector('#connection[data-unacknowledged="0"]')
  await b.page.keyboard.press('End')
  await b.page.click('#description')
  await b.page.keyboard.press('End')
  await b.page.keyboard.type(' Received over SSE.')
  await waitText(a.page, 'Sent over HTTP. Received over SSE.')
  // A conditional write goes through PUT with If-Match.
  await a.page.selectOption('#status', 'done')
  await b.page.waitForSelector('#status-pill[data-status="done"]')
  await screenshot(a.page, 'fallback-sse')
  await a.context.close()
  await b.context.close()
})

test('the bell: a mention typed by one person shows up in the other\'s bell', async () => {
  // Notifications are per user: a server that requires tokens, one per person.
  const secured = await Server.start({ secret: randomBytes(32).toString('hex') })
  const contexts = []
  const signIn = async (name, doc) => {
    const token = secured.token(name.toLowerCase(), { name })
    const context = await live.browser.newContext({ viewport: { width: 900, height: 900 } })
    contexts.push(context)
    const page = await context.newPage()
    page.on('pageerror', (err) => console.error(`[${name}] page error:`, err))
    await page.goto(`${secured.http}/?doc=${doc}&name=${name}&token=${encodeURIComponent(token)}`)
    await page.waitForSelector('#app[data-ready="true"]')
    await page.waitForSelector(LIVE)
    return page
  }
  try {
    const doc = uniqueDoc('bell')
    const alice = await signIn('Alice', doc)
    const bob = await signIn('Bob', doc)
    await bob.waitForSelector('#inbox:not([hidden])[data-state="live"] #bell[data-unread="0"]')
    await alice.waitForSelector('#inbox[data-state="live"] #bell[data-unread="0"]')
    // Alice types "@Bo": the people here are offered; Enter picks Bob, the next Enter sends.
    await alice.waitForSelector('#viewers .avatar[data-user="bob"]')
    await alice.click('#comment')
    await alice.keyboard.type('Could you check the copy, @Bo')
    await alice.waitForSelector('#mention-menu:not([hidden]) li[data-user="bob"][aria-selected="true"]')
    await screenshot(alice, 'bell-alice-mentions')
    await alice.keyboard.press('Enter')
    await alice.keyboard.type('before Friday?')
    assert.equal(await alice.$eval('#comment', (el) => el.value), 'Could you check the copy, @Bob before Friday?')
    const sent = Date.now()
    await alice.keyboard.press('Enter')
    // The comment holds the markup the server recognises; both show it as a name.
    await alice.waitForSelector('#comments .comment .mention[data-user="bob"]')
    const name = await alice.$eval('#comments .comment', (el) => el.dataset.name)
    assert.equal(await alice.evaluate((n) => window.tandem.doc.text(n).toString(), name),
      'Could you check the copy, @[Bob](bob) before Friday?')
    await bob.waitForSelector('#comments .comment .mention[data-user="bob"][data-me="true"]')

    // Bob's bell counts it within a few seconds, and the list shows it.
    await bob.waitForSelector('#bell[data-unread="1"]', { timeout: 5000 })
    console.log(`# mention reached the other browser's bell in ${Date.now() - sent} ms`)
    assert.equal(await bob.textContent('#bell-count'), '1')
    await bob.click('#bell')
    const note = await bob.waitForSelector('#inbox-list .note[data-type="mention"][data-read="false"]')
    const line = await note.textContent()
    assert.match(line, /Alice\s+mentioned you in\s+BELL-/)
    assert.equal(await note.getAttribute('data-doc'), doc)
    const [notification] = await bob.evaluate(() => window.tandem.inbox.notifications)
    assert.equal(notification.type, 'mention')
    assert.equal(notification.from, 'alice')
    assert.equal(notification.doc, doc)
    assert.equal(notification.field, name)
    assert.match(notification.excerpt, /check the copy/)
    await screenshot(bob, 'bell-bob-notified')
    // The author is not notified of her own mention.
    assert.equal(await alice.$eval('#bell', (el) => el.dataset.unread), '0')

    // Clicking it marks it read: the count goes to 0, and stays so after a reload.
    await note.click()
    await bob.waitForSelector('#bell[data-unread="0"]')
    assert.equal(await bob.textContent('#bell-count'), '')
    await bob.reload()
    await bob.waitForSelector('#inbox[data-state="live"] #bell[data-unread="0"]')
    await bob.click('#bell')
    await bob.waitForSelector('#inbox-list .note[data-type="mention"][data-read="true"]')
    await screenshot(bob, 'bell-bob-read')

    // Bob's tokens are revoked: his inbox closes for good (4401) instead of reconnecting.
    const admin = secured.token('ops', { role: 'admin' })
    const revoked = await fetch(`${secured.http}/admin/revoke`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${admin}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ user: 'bob' })
    })
    assert.equal(revoked.status, 200)
    await bob.waitForSelector('#inbox[data-state="closed"]')
    const ended = await bob.evaluate(() => window.tandem.events.filter((e) => e.type === 'inbox-error'))
    assert.deepEqual(ended.map((e) => e.code), [4401])
  } finally {
    for (const c of contexts) await c.close()
    await secured.close()
  }
})
