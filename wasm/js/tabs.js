// Cross-tab sharing through BroadcastChannel: tabs of one origin exchange document updates and
// presence directly, so they stay in sync even with no server reachable.
//
// Messages on channel "tandem:<doc>", each {type, from: clientId, ...}:
//   hello              a tab opened: others answer with their state and presence
//   state   {update, to}   a whole document state, for the tab that said hello
//   update  {update, author}
//   awareness {payload}   an awareness payload (presence)
export class TabChannel {
  constructor (docName, clientId, handlers, BC = globalThis.BroadcastChannel) {
    this.clientId = clientId
    this.handlers = handlers
    this.channel = BC ? new BC(`tandem:${docName}`) : null
    if (this.channel) {
      this.channel.onmessage = (event) => this._receive(event.data)
    }
  }

  get available () {
    return this.channel !== null
  }

  _post (message) {
    if (!this.channel) return
    try {
      this.channel.postMessage({ ...message, from: this.clientId })
    } catch (err) {
      console.warn('tandem: could not post to other tabs', err)
    }
  }

  hello () {
    this._post({ type: 'hello' })
  }

  sendUpdate (update, author) {
    this._post({ type: 'update', update, author })
  }

  sendAwareness (payload) {
    this._post({ type: 'awareness', payload })
  }

  _receive (m) {
    if (!m || typeof m !== 'object' || m.from === this.clientId) return
    switch (m.type) {
      case 'hello':
        this._post({ type: 'state', update: this.handlers.state(), to: m.from })
        this.handlers.hello(m.from)
        break
      case 'state':
        if (m.to === this.clientId) this.handlers.update(m.update, undefined, m.from)
        break
      case 'update':
        this.handlers.update(m.update, m.author, m.from)
        break
      case 'awareness':
        this.handlers.awareness(m.payload, m.from)
        break
    }
  }

  close () {
    if (this.channel) this.channel.close()
    this.channel = null
  }
}
