// tandem's browser client.
//
//   import { open } from 'tandem-client'
//   const doc = await open('task-42', { url: 'http://127.0.0.1:8787', user: { id: 'u1', name: 'Ada' } })
//   doc.text('description').insert(0, 'Hello')
//   doc.field('status').set('done', { ifVersion: doc.field('status').version })
//   doc.on('status', (s) => console.log(s.state, s.synced, s.unacknowledged))
//   const inbox = new Inbox({ url: 'http://127.0.0.1:8787', token })   // the token's user's notifications
//   inbox.on('unread', (n) => console.log(n, 'unread'))
import init from './tandem_wasm.js'
import { TandemDoc, TextField, Field, PresenceView } from './doc.js'
import { Provider } from './provider.js'
import { OfflineStore } from './offline.js'

export { TandemDoc, TextField, Field, PresenceView, Provider, OfflineStore }
export { Inbox, InboxError } from './inbox.js'
export { mentionMarkup, insertMention, parseMentions } from './mention.js'
export { backoffDelay } from './backoff.js'
export * as bindings from './tandem_wasm.js'

let ready = null

// Loads the WebAssembly module once. In a browser it is fetched next to this file; elsewhere
// (Node) pass its bytes or a compiled WebAssembly.Module.
export function load (wasm) {
  if (!ready) ready = init(wasm === undefined ? undefined : { module_or_path: wasm })
  return ready
}

// Opens document `name`: loads the cached copy and unacknowledged edits (IndexedDB), then
// connects. Resolves once the document is ready to read and edit, possibly still offline.
export async function open (name, options = {}) {
  await load(options.wasm)
  const store = options.offline === false ? null : await OfflineStore.open(name, options.indexedDB)
  const doc = new TandemDoc(name, { user: options.user, clientId: options.clientId })
  const provider = new Provider(doc, { ...options, store })
  doc.provider = provider
  await provider.loadCached()
  if (options.connect !== false) provider.connect()
  const destroy = doc.destroy.bind(doc)
  doc.destroy = () => {
    provider.destroy()
    if (store) store.close()
    destroy()
  }
  return doc
}
