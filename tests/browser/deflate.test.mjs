// permessage-deflate with Chromium: the browser offers it on every WebSocket, and once it is
// negotiated compresses every message it sends, however small. The server must accept the
// offer and understand those messages.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, launchChromium, uniqueDoc } from './harness.mjs'

let server
let browser

before(async () => {
  server = await Server.start()
  browser = await launchChromium()
})

after(async () => {
  await browser?.close()
  await server?.close()
})

test('Chromium negotiates permessage-deflate and its compressed messages are read', async () => {
  const context = await browser.newContext()
  const page = await context.newPage()
  await page.goto(`${server.http}/healthz`)
  const doc = uniqueDoc('deflate')
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
        if (m[0] === 0 && m[1] === 1) resolve()
      }
      ws.onclose = (e) => reject(new Error(`closed with ${e.code} ${e.reason}`))
      setTimeout(() => reject(new Error('no sync step 2 within 10 s')), 10000)
    })
    ws.send(new Uint8Array([0, 0, 1, 0]))
    await answered
    const extensions = ws.extensions
    ws.onclose = null
    ws.close()
    return { extensions }
  }, `${server.ws}/ws/${doc}`)
  assert.match(seen.extensions, /permessage-deflate/)
  await context.close()
})
