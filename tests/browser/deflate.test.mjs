// permessage-deflate with Chromium: the browser offers it on every WebSocket, and once it is
// negotiated compresses every message it sends, however small. The server must accept the
// offer, understand those messages, and send large ones (a first sync) compressed in a form
// the browser decodes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { withServerAndChromium, uniqueDoc } from './harness.mjs'

const live = withServerAndChromium()

async function compressedMessages () {
  const text = await (await fetch(`${live.server.http}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith('tandem_ws_compressed_messages_total '))
  return Number(line.split(' ')[1])
}

test('Chromium negotiates permessage-deflate: its compressed messages are read, a large sync reaches it compressed', async () => {
  const context = await live.browser.newContext()
  const page = await context.newPage()
  await page.goto(`${live.server.http}/healthz`)
  const doc = uniqueDoc('deflate')
  // A document whose first sync is well over the 1 KiB the server compresses from.
  const words = 'every replica converges without a central lock '.repeat(1200)
  const edit = await fetch(`${live.server.http}/docs/${doc}/texts/body`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ index: 0, delete: 0, insert: words })
  })
  assert.equal(edit.status, 200, await edit.text())
  const compressedBefore = await compressedMessages()
  const seen = await page.evaluate(async (url) => {
    const ws = new WebSocket(url)
    ws.binaryType = 'arraybuffer'
    await new Promise((resolve, reject) => {
      ws.onopen = resolve
      ws.onerror = () => reject(new Error('the WebSocket failed'))
    })
    // y-websocket sync step 1 with an empty state vector: the server answers with sync step 2
    // ([0, 1, ...]) only if it read this message, which Chromium sent compressed.
    const answered = new Promise((resolve, reject) => {
      ws.onmessage = (e) => {
        const m = new Uint8Array(e.data)
        if (m[0] === 0 && m[1] === 1) resolve(m.length)
      }
      ws.onclose = (e) => reject(new Error(`closed with ${e.code} ${e.reason}`))
      setTimeout(() => reject(new Error('no sync step 2 within 10 s')), 10000)
    })
    ws.send(new Uint8Array([0, 0, 1, 0]))
    const step2 = await answered
    const extensions = ws.extensions
    ws.onclose = null
    ws.close()
    return { extensions, step2 }
  }, `${live.server.ws}/ws/${doc}`)
  assert.match(seen.extensions, /permessage-deflate/)
  // The sync step 2 holds the whole text: it went out compressed and Chromium inflated it.
  assert.ok(seen.step2 > words.length, `sync step 2 of ${seen.step2} bytes`)
  assert.ok(await compressedMessages() > compressedBefore, 'the server compressed it')
  await context.close()
})
