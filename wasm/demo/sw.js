// The demo's offline shell: network first, the cached copy when the network fails, so the
// page reloads while offline and shows the document cached in IndexedDB.
const CACHE = 'tandem-demo-v3'
const SHELL = [
  '/', '/demo/demo.css', '/demo/demo.js',
  '/pkg/index.js', '/pkg/tandem_wasm.js', '/pkg/tandem_wasm_bg.wasm'
]

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()))
})

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()))
})

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url)
  if (event.request.method !== 'GET' || url.origin !== location.origin) return
  // The API and its event streams (never cached; a stream would never finish copying).
  if (/^\/(ws|docs|me)\//.test(url.pathname)) return
  const key = event.request.mode === 'navigate' ? '/' : url.pathname
  event.respondWith((async () => {
    try {
      const res = await fetch(event.request)
      if (res.ok) {
        const copy = res.clone()
        caches.open(CACHE).then((c) => c.put(key, copy))
      }
      return res
    } catch (err) {
      const hit = await caches.match(key)
      if (hit) return hit
      throw err
    }
  })())
})
