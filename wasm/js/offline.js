// Offline storage in IndexedDB: the edits not yet acknowledged by the server (so they survive
// a reload and are sent on reconnect) and a cached copy of the document state (so the document
// can be viewed while offline).
//
// Database "tandem", version 1:
//   "state"   key = document name, value = {state: Uint8Array, savedAt: ms}
//   "pending" autoincrement key, value = {doc, update: Uint8Array, at: ms}, index "doc"

const DB_NAME = 'tandem'
const DB_VERSION = 1

function request (req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
}

function done (tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve()
    tx.onerror = () => reject(tx.error)
    tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'))
  })
}

function openDb (indexedDB) {
  const req = indexedDB.open(DB_NAME, DB_VERSION)
  req.onupgradeneeded = () => {
    const db = req.result
    if (!db.objectStoreNames.contains('state')) db.createObjectStore('state')
    if (!db.objectStoreNames.contains('pending')) {
      const pending = db.createObjectStore('pending', { autoIncrement: true })
      pending.createIndex('doc', 'doc')
    }
  }
  return request(req)
}

// The offline store of one document. `open` resolves to null when IndexedDB is unavailable
// (Node, private modes that refuse it): the client then works online only.
export class OfflineStore {
  static async open (doc, indexedDB = globalThis.indexedDB) {
    if (!indexedDB) return null
    try {
      return new OfflineStore(doc, await openDb(indexedDB))
    } catch (err) {
      console.warn('tandem: IndexedDB unavailable, offline edits will not survive a reload', err)
      return null
    }
  }

  constructor (doc, db) {
    this.doc = doc
    this.db = db
  }

  // {state: Uint8Array | null, pending: [{key, update}]} in the order the edits were made.
  async load () {
    const tx = this.db.transaction(['state', 'pending'], 'readonly')
    const saved = await request(tx.objectStore('state').get(this.doc))
    const index = tx.objectStore('pending').index('doc')
    const keys = await request(index.getAllKeys(IDBKeyRange.only(this.doc)))
    const values = await request(index.getAll(IDBKeyRange.only(this.doc)))
    const pending = keys.map((key, i) => ({ key, update: new Uint8Array(values[i].update) }))
    pending.sort((a, b) => a.key - b.key)
    return { state: saved ? new Uint8Array(saved.state) : null, pending }
  }

  // Stores one unacknowledged edit; resolves to its key once it is on disk.
  async addPending (update) {
    const tx = this.db.transaction('pending', 'readwrite')
    const key = request(tx.objectStore('pending').add({ doc: this.doc, update, at: Date.now() }))
    await done(tx)
    return key
  }

  // Caches `state` and, in the same transaction, drops the pending edits `keys` (acknowledged
  // by the server, and held by `state`): a reload finds each edit in one place or the other.
  async saveState (state, keys = []) {
    const tx = this.db.transaction(['state', 'pending'], 'readwrite')
    tx.objectStore('state').put({ state, savedAt: Date.now() }, this.doc)
    const pending = tx.objectStore('pending')
    for (const key of keys) pending.delete(key)
    await done(tx)
  }

  close () {
    this.db.close()
  }
}
