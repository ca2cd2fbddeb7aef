// A minimal event emitter: on(type, fn) returns a function that unsubscribes.
export class Emitter {
  constructor () {
    this._handlers = new Map()
  }

  on (type, fn) {
    let set = this._handlers.get(type)
    if (!set) this._handlers.set(type, (set = new Set()))
    set.add(fn)
    return () => this.off(type, fn)
  }

  off (type, fn) {
    const set = this._handlers.get(type)
    if (set) set.delete(fn)
  }

  emit (type, ...args) {
    const set = this._handlers.get(type)
    if (!set) return
    for (const fn of [...set]) {
      try {
        fn(...args)
      } catch (err) {
        // One failing listener must not stop the others (or the provider's loop).
        console.error(`tandem: a '${type}' listener threw`, err)
      }
    }
  }
}
