// The tandem demo: one task card co-edited by everyone who opens this page.

// The browser package is built by wasm/build.sh; a server in development mode builds it on
// first need. Until it loads, say plainly why, and reload once it is ready.
const { open, Inbox, mentionMarkup, parseMentions } = await import('/pkg/index.js').catch(async (cause) => {
  await explainMissingPackage()
  throw new Error(`the browser package did not load: ${cause}`)
})

async function explainMissingPackage () {
  const banner = document.createElement('div')
  banner.className = 'package-problem'
  banner.setAttribute('role', 'alert')
  banner.id = 'package-problem'
  document.body.prepend(banner)
  for (;;) {
    let status
    try {
      status = await (await fetch('/demo/status')).json()
    } catch {
      status = { package: 'failed', message: 'the server cannot be reached' }
    }
    if (status.package === 'ready') return location.reload()
    const connection = document.getElementById('connection')
    if (connection) connection.dataset.state = 'offline'
    const label = document.getElementById('connection-label')
    if (label) label.textContent = status.package === 'building' ? 'Building…' : 'Not available'
    banner.dataset.package = status.package ?? 'failed'
    banner.textContent = status.message ?? status.error ?? 'the browser package is not available'
    if (status.output) {
      const pre = document.createElement('pre')
      pre.textContent = status.output
      banner.append(pre)
    }
    if (status.package !== 'building') return
    await new Promise((resolve) => setTimeout(resolve, 3000))
  }
}

const $ = (id) => document.getElementById(id)
const params = new URLSearchParams(location.search)
const docName = params.get('doc') || 'task-42'

const PEOPLE = [
  ['Ada', '#e5484d'], ['Grace', '#8e4ec6'], ['Alan', '#0090ff'], ['Katherine', '#12a594'],
  ['Linus', '#f76b15'], ['Margaret', '#d6409f'], ['Dennis', '#3e63dd'], ['Radia', '#46a758'],
  ['Barbara', '#e54666'], ['Ken', '#00a2c7'], ['Frances', '#ab4aba'], ['Edsger', '#ad7f58']
]
const STATUS_LABELS = { backlog: 'Backlog', todo: 'To do', doing: 'In progress', review: 'In review', done: 'Done' }
const TYPING_IDLE_MS = 1500

function pickUser () {
  const name = params.get('name')
  if (name) {
    const id = params.get('user') || name.toLowerCase()
    const color = params.get('color') || PEOPLE[[...id].reduce((h, c) => h + c.charCodeAt(0), 0) % PEOPLE.length][1]
    return { id, name, color }
  }
  try {
    const saved = JSON.parse(localStorage.getItem('tandem-demo-user'))
    if (saved && saved.id) return saved
  } catch {}
  const [n, color] = PEOPLE[Math.floor(Math.random() * PEOPLE.length)]
  const user = { id: `${n.toLowerCase()}-${Math.random().toString(36).slice(2, 7)}`, name: n, color }
  try { localStorage.setItem('tandem-demo-user', JSON.stringify(user)) } catch {}
  return user
}

const initials = (name) => (name || '?').split(/\s+/).map((w) => w[0]).join('').slice(0, 2).toUpperCase()
const esc = (s) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]))

function ago (ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000))
  if (s < 10) return 'just now'
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.round(s / 60)} min ago`
  return new Date(ms).toLocaleString()
}

function toast (html, ms = 4200) {
  const el = document.createElement('div')
  el.className = 'toast'
  el.innerHTML = html
  $('toasts').append(el)
  setTimeout(() => el.remove(), ms)
}

const user = pickUser()
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('/sw.js').catch((err) => console.warn('offline shell unavailable', err))
}

// Numeric provider settings may be given in the URL (e.g. ?hiddenCloseMs=2000).
const tuning = {}
for (const key of ['hiddenCloseMs', 'silenceMs', 'heartbeatMs', 'minBackoffMs', 'maxBackoffMs', 'fallbackAfter']) {
  if (params.has(key)) tuning[key] = Number(params.get(key))
}
// A token from `tandem token` (?token=...): required by a server with --auth-secret, and what
// makes the bell this user's (in open development mode everybody is the same user, "dev").
const token = params.get('token') || undefined
const doc = await open(docName, { user, token, ...tuning })
const events = []
window.tandem = { doc, events, user }
doc.on('conflict', (e) => {
  events.push({ type: 'conflict', ...e })
  if (e.name !== 'status') return
  const now = STATUS_LABELS[e.current] ?? e.current ?? 'unset'
  toast(`Someone changed the status to <b>${esc(String(now))}</b> first — your change to <b>${esc(STATUS_LABELS[e.attempted] ?? String(e.attempted))}</b> was rolled back.`)
})
doc.on('status', (s) => events.push({ type: 'status', ...s }))

$('doc-name').textContent = docName.toUpperCase()
document.title = `${docName.toUpperCase()} · tandem`
$('whoami').textContent = `you are ${user.name}`
const me = $('me-avatar')
me.style.setProperty('--c', user.color)
me.textContent = initials(user.name)

// --- connection indicator ---------------------------------------------------------------------
function renderStatus (s) {
  const el = $('connection')
  el.dataset.state = s.state
  el.dataset.synced = String(s.synced)
  el.dataset.unacknowledged = String(s.unacknowledged)
  el.dataset.unsaved = String(s.unsaved)
  el.dataset.transport = s.transport ?? ''
  el.dataset.reason = s.reason ?? ''
  let label = 'Offline'
  if (s.state === 'connecting') label = 'Connecting…'
  else if (s.state === 'connected') label = s.synced ? (s.unacknowledged ? 'Saving…' : 'Live') : 'Syncing…'
  $('connection-label').textContent = label
  const parts = []
  const stored = s.unacknowledged - s.unsaved
  if (s.state === 'offline' && s.unsaved) parts.push('saving on this device…')
  else if (s.state === 'offline' && stored) parts.push(`${stored} edit${stored === 1 ? '' : 's'} saved on this device`)
  else if (s.state === 'offline') parts.push('changes are kept on this device')
  if (s.transport === 'sse') parts.push('HTTP fallback')
  $('connection-detail').textContent = parts.join(' · ')
}
doc.on('status', renderStatus)
renderStatus(doc.provider.status)

// --- viewers ----------------------------------------------------------------------------------
function renderViewers () {
  const list = doc.presence.viewers()
  list.sort((a, b) => (a.userId === user.id ? -1 : b.userId === user.id ? 1 : 0))
  $('viewers').innerHTML = list.slice(0, 8).reverse().map((v) => {
    const mine = v.userId === user.id
    const tabs = v.clients.length > 1 ? `<span class="tabs">${v.clients.length}</span>` : ''
    const title = `${v.name ?? 'Someone'}${mine ? ' (you)' : ''}${v.clients.length > 1 ? ` · ${v.clients.length} tabs` : ''}`
    return `<span class="avatar" style="--c:${esc(v.color ?? '#888')}" data-user="${esc(v.userId ?? '')}" data-me="${mine}" title="${esc(title)}">${esc(initials(v.name))}${tabs}</span>`
  }).join('')
}

// --- typing indicators ------------------------------------------------------------------------
function typingText (field) {
  const names = doc.presence.typing(field).filter((t) => t.userId !== user.id).map((t) => t.name ?? 'Someone')
  if (names.length === 0) return ''
  if (names.length === 1) return `${names[0]} is typing`
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing`
  return `${names.length} people are typing`
}
function renderTyping () {
  const c = typingText('comments')
  $('comment-typing').innerHTML = c ? `<span class="dots"><i></i><i></i><i></i></span>${esc(c)}…` : ''
  const d = typingText('description')
  $('description-typing').textContent = d ? `${d}…` : ''
}

function typingTracker (field) {
  let timer = null
  return {
    poke () {
      if (!timer) doc.presence.setTyping(field)
      clearTimeout(timer)
      timer = setTimeout(() => this.stop(), TYPING_IDLE_MS)
    },
    stop () {
      if (!timer) return
      clearTimeout(timer)
      timer = null
      doc.presence.setTyping(null)
    }
  }
}

// --- title and status (registers) -------------------------------------------------------------
const title = $('title')
const titleField = doc.field('title')
function renderTitle () {
  if (document.activeElement !== title) title.value = titleField.get() ?? ''
}
function commitTitle () {
  const v = title.value.trim()
  if (v !== (titleField.get() ?? '')) titleField.set(v)
}
title.addEventListener('change', commitTitle)
title.addEventListener('keydown', (e) => { if (e.key === 'Enter') { commitTitle(); title.blur() } })
title.addEventListener('blur', () => { commitTitle(); renderTitle() })

const statusField = doc.field('status')
const status = $('status')
function renderStatusField () {
  const v = statusField.get() ?? 'todo'
  status.value = v
  $('status-pill').dataset.status = v
  $('status-pill').dataset.pending = String(statusField.pending)
  const st = statusField.state()
  const who = st?.author === user.id ? 'you' : knownName(st?.author)
  $('status-note').textContent = st ? `updated ${who ? `by ${who} ` : ''}${ago(st.at)}` : ''
}
function knownName (id) {
  return doc.presence.viewers().find((x) => x.userId === id)?.name
}
const viewerName = (id) => knownName(id) ?? 'someone'
status.addEventListener('change', async () => {
  const next = status.value
  if (doc.provider.status.synced) {
    // Conditional write: only if nobody changed the status since we saw it.
    await statusField.set(next, { ifVersion: statusField.version })
  } else {
    // Offline nobody can decide a conditional write: last write wins, shared with other tabs.
    statusField.set(next)
  }
})

// --- description (co-edited text with remote cursors) -----------------------------------------
const desc = $('description')
const overlay = $('description-overlay')
const descField = doc.text('description')
const descTyping = typingTracker('description')
let shown = ''
let editing = false

function diff (a, b) {
  let start = 0
  const max = Math.min(a.length, b.length)
  while (start < max && a.charCodeAt(start) === b.charCodeAt(start)) start++
  let endA = a.length
  let endB = b.length
  while (endA > start && endB > start && a.charCodeAt(endA - 1) === b.charCodeAt(endB - 1)) { endA--; endB-- }
  return { index: start, remove: endA - start, insert: b.slice(start, endB) }
}

function transform (pos, delta) {
  let at = 0
  for (const op of delta) {
    if (op.retain !== undefined) at += op.retain
    else if (op.insert !== undefined) {
      if (at < pos) pos += op.insert.length
      at += op.insert.length
    } else if (op.delete !== undefined) {
      if (pos > at) pos -= Math.min(op.delete, pos - at)
    }
    if (at > pos) break
  }
  return pos
}

function publishCursor () {
  if (document.activeElement !== desc) return
  const forward = desc.selectionDirection !== 'backward'
  const [a, h] = forward ? [desc.selectionStart, desc.selectionEnd] : [desc.selectionEnd, desc.selectionStart]
  doc.presence.setCursor('description', a, h)
}

desc.addEventListener('input', () => {
  const next = desc.value
  const d = diff(shown, next)
  if (d.remove || d.insert) {
    editing = true
    try { descField.edit(d.index, d.remove, d.insert) } finally { editing = false }
  }
  shown = next
  descTyping.poke()
  publishCursor()
  renderCursors()
})
for (const ev of ['select', 'keyup', 'mouseup', 'focus']) desc.addEventListener(ev, () => { publishCursor(); renderCursors() })
document.addEventListener('selectionchange', () => { if (document.activeElement === desc) publishCursor() })
desc.addEventListener('blur', () => { descTyping.stop(); doc.presence.clearCursor('description'); doc.stopCapturing() })
// The editor grows with its text (no inner scrollbar, so the overlay wraps lines identically).
function autoGrow () {
  desc.style.height = 'auto'
  desc.style.height = `${Math.max(170, desc.scrollHeight + 2)}px`
}
desc.addEventListener('input', autoGrow)

descField.observe((change) => {
  if (editing) return
  const focused = document.activeElement === desc
  const s = transform(desc.selectionStart, change.delta)
  const e = transform(desc.selectionEnd, change.delta)
  shown = descField.toString()
  if (desc.value !== shown) {
    desc.value = shown
    if (focused) desc.setSelectionRange(s, e)
    autoGrow()
  }
  if (!change.local && change.author) {
    $('description-edited').textContent = `edited by ${viewerName(change.author)} just now`
    $('description-edited').dataset.at = String(Date.now())
  }
  renderCursors()
})

function renderCursors () {
  const text = shown
  const cursors = doc.presence.cursors('description')
    .map((c) => ({ ...c, from: Math.min(c.anchor, c.head, text.length), to: Math.min(Math.max(c.anchor, c.head), text.length), head: Math.min(c.head, text.length) }))
  const cuts = new Set([0, text.length])
  for (const c of cursors) { cuts.add(c.from); cuts.add(c.to); cuts.add(c.head) }
  const points = [...cuts].sort((a, b) => a - b)
  let html = ''
  for (let i = 0; i < points.length; i++) {
    const p = points[i]
    for (const c of cursors.filter((c) => c.head === p)) {
      const color = esc(c.user.color ?? '#888')
      html += `<span class="caret" data-client="${c.clientId}" data-user="${esc(c.user.id ?? '')}" style="--c:${color}"><span class="caret-label">${esc(c.user.name ?? 'Someone')}</span></span>`
    }
    const next = points[i + 1]
    if (next === undefined) break
    const seg = esc(text.slice(p, next))
    const sel = cursors.find((c) => c.from <= p && next <= c.to && c.from !== c.to)
    html += sel ? `<span class="sel" style="--c:${esc(sel.user.color ?? '#888')}">${seg}</span>` : seg
  }
  overlay.innerHTML = html + '\u200b'
}

// --- comments: the text in a text field "comment:<id>" (where the server looks for mentions),
// author and time in the register of the same name ------------------------------------------
const commentBox = $('comment')
const commentTyping = typingTracker('comments')

// Text with its mentions (`@[Name](id)`) shown as names.
function richText (s) {
  let html = ''
  let at = 0
  for (const m of parseMentions(s)) {
    const mine = m.id === user.id ? ' data-me="true"' : ''
    html += `${esc(s.slice(at, m.index))}<span class="mention" data-user="${esc(m.id)}"${mine}>@${esc(m.name)}</span>`
    at = m.index + m.length
  }
  return html + esc(s.slice(at))
}

function renderComments () {
  const all = Object.entries(doc.fields())
    .filter(([name, f]) => name.startsWith('comment:') && f.value && typeof f.value === 'object')
    .map(([name, f]) => ({ name, ...f.value }))
    .sort((a, b) => (a.at - b.at) || (a.name < b.name ? -1 : 1))
  $('comment-count').textContent = all.length ? String(all.length) : ''
  $('comments').innerHTML = all.map((c) => `
    <li class="comment" data-name="${esc(c.name)}">
      <span class="avatar small" style="--c:${esc(c.color ?? '#888')}">${esc(initials(c.authorName))}</span>
      <div class="bubble"><div class="who">${esc(c.authorName ?? 'Someone')}<span class="when">${esc(ago(c.at))}</span></div>
      <div class="text">${richText(typeof c.text === 'string' ? c.text : doc.text(c.name).toString())}</div></div>
    </li>`).join('')
}

// Mentioning: "@" (or the @ button) offers the people here and those who commented; a pick
// writes "@Name" in the box and `@[Name](id)` in the comment.
const menu = $('mention-menu')
const picked = new Map() // name → id, for this comment
let mention = null // {start, items, active} while the menu is open

function mentionable () {
  const people = new Map()
  for (const v of doc.presence.viewers()) {
    if (v.userId && v.userId !== user.id) people.set(v.userId, { id: v.userId, name: v.name ?? v.userId, color: v.color })
  }
  for (const [name, f] of Object.entries(doc.fields())) {
    const c = f.value
    if (name.startsWith('comment:') && c?.author && c.author !== user.id && !people.has(c.author)) {
      people.set(c.author, { id: c.author, name: c.authorName ?? c.author, color: c.color })
    }
  }
  return [...people.values()]
}

function updateMentionMenu () {
  const caret = commentBox.selectionStart
  const m = caret === commentBox.selectionEnd && commentBox.value.slice(0, caret).match(/(?:^|\s)@([^\s@]*)$/)
  if (!m) return closeMentionMenu()
  const q = m[1].toLowerCase()
  const items = mentionable().filter((p) => p.name.toLowerCase().startsWith(q) || p.id.toLowerCase().startsWith(q))
  if (items.length === 0) return closeMentionMenu()
  const active = mention ? Math.min(mention.active, items.length - 1) : 0
  mention = { start: caret - m[1].length - 1, items, active }
  menu.innerHTML = items.map((p, i) => `
    <li role="option" data-user="${esc(p.id)}" aria-selected="${i === active}">
      <span class="avatar tiny" style="--c:${esc(p.color ?? '#888')}">${esc(initials(p.name))}</span>${esc(p.name)}
    </li>`).join('')
  menu.hidden = false
}

function closeMentionMenu () {
  mention = null
  menu.hidden = true
}

function pickMention (person) {
  const caret = commentBox.selectionStart
  const name = person.name.replace(/[[\]\n\r]/g, '').trim() || person.id
  const text = `@${name} `
  commentBox.setRangeText(text, mention.start, caret, 'end')
  picked.set(name, person.id)
  closeMentionMenu()
  commentBox.focus()
}

// The comment's text with each picked "@Name" written as a mention.
function withMentions (text) {
  if (picked.size === 0) return text
  const names = [...picked.keys()].sort((a, b) => b.length - a.length)
  const pattern = new RegExp(`@(${names.map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})(?![\\p{L}\\p{N}_])`, 'gu')
  return text.replace(pattern, (_, name) => mentionMarkup({ id: picked.get(name), name }))
}

menu.addEventListener('mousedown', (e) => {
  const li = e.target.closest('li[data-user]')
  if (!li || !mention) return
  e.preventDefault()
  pickMention(mention.items.find((p) => p.id === li.dataset.user))
})
$('mention').addEventListener('click', () => {
  commentBox.focus()
  const at = commentBox.selectionStart
  const space = at > 0 && !/\s/.test(commentBox.value[at - 1]) ? ' ' : ''
  commentBox.setRangeText(`${space}@`, at, commentBox.selectionEnd, 'end')
  updateMentionMenu()
})

commentBox.addEventListener('input', () => {
  if (commentBox.value.trim()) commentTyping.poke()
  else commentTyping.stop()
  updateMentionMenu()
})
commentBox.addEventListener('click', updateMentionMenu)
commentBox.addEventListener('keydown', (e) => {
  if (mention) {
    const n = mention.items.length
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault()
      mention.active = (mention.active + (e.key === 'ArrowDown' ? 1 : n - 1)) % n
      updateMentionMenu()
      return
    }
    if (e.key === 'Enter' || e.key === 'Tab') {
      e.preventDefault()
      pickMention(mention.items[mention.active])
      return
    }
    if (e.key === 'Escape') {
      e.preventDefault()
      closeMentionMenu()
      return
    }
  }
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('composer').requestSubmit() }
})
commentBox.addEventListener('blur', () => { commentTyping.stop(); closeMentionMenu() })
$('composer').addEventListener('submit', (e) => {
  e.preventDefault()
  const text = commentBox.value.trim()
  if (!text) return
  const id = `comment:${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
  // The text first: whoever sees the comment's register already has its text.
  doc.text(id).insert(0, withMentions(text))
  doc.field(id).set({ author: user.id, authorName: user.name, color: user.color, at: Date.now() })
  commentBox.value = ''
  picked.clear()
  closeMentionMenu()
  commentTyping.stop()
})

// --- the bell: this user's notifications ------------------------------------------------------
const inboxTuning = {}
for (const key of ['minBackoffMs', 'maxBackoffMs']) if (key in tuning) inboxTuning[key] = tuning[key]
const inbox = new Inbox({ token, ...inboxTuning })
window.tandem.inbox = inbox
const bell = $('bell')
const panel = $('inbox-panel')
const DOING = {
  mention: 'mentioned you in',
  assigned: 'assigned you',
  reply: 'replied in',
  due: 'is due soon:'
}

function noteLine (n) {
  const docLabel = `<b>${esc(n.doc.toUpperCase())}</b>`
  if (!n.from) return `${docLabel} ${esc(DOING[n.type] ?? n.type)}`
  return `<b>${esc(knownName(n.from) ?? n.from)}</b> ${esc(DOING[n.type] ?? n.type)} ${docLabel}`
}

function renderBell () {
  const count = inbox.unread
  bell.dataset.unread = String(count)
  $('bell-count').textContent = count > 99 ? '99+' : count ? String(count) : ''
  bell.setAttribute('aria-label', count ? `Notifications, ${count} unread` : 'Notifications')
  $('inbox').dataset.state = inbox.status.state
  if (inbox.status.state === 'live') $('inbox').hidden = false
}

function renderInbox () {
  const list = inbox.notifications
  $('inbox-empty').hidden = list.length > 0
  $('inbox-more').hidden = inbox.next === null
  $('inbox-list').innerHTML = list.map((n) => `
    <li class="note" data-id="${n.id}" data-type="${esc(n.type)}" data-read="${n.read}" data-doc="${esc(n.doc)}">
      <button type="button">
        <span class="unread-dot" aria-hidden="true"></span>
        <span class="note-body">
          <span class="note-line">${noteLine(n)}</span>
          ${n.excerpt ? `<span class="note-excerpt">${richText(n.excerpt)}</span>` : ''}
          <span class="note-when">${esc(ago(n.at))}</span>
        </span>
      </button>
    </li>`).join('')
}

function showPanel (show) {
  panel.hidden = !show
  bell.setAttribute('aria-expanded', String(show))
  if (show) renderInbox()
}

bell.addEventListener('click', () => showPanel(panel.hidden))
document.addEventListener('mousedown', (e) => { if (!panel.hidden && !$('inbox').contains(e.target)) showPanel(false) })
document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && !panel.hidden) showPanel(false) })
$('mark-all').addEventListener('click', () => inbox.markAllRead().catch((err) => toast(esc(String(err.message)))))
$('inbox-more').addEventListener('click', () => inbox.more().catch((err) => toast(esc(String(err.message)))))
$('inbox-list').addEventListener('click', async (e) => {
  const li = e.target.closest('.note')
  if (!li) return
  const n = inbox.notifications.find((x) => String(x.id) === li.dataset.id)
  if (!n) return
  const done = n.read ? Promise.resolve() : inbox.markRead([n.id]).catch((err) => toast(esc(String(err.message))))
  if (n.doc !== docName) {
    // Another task: open it as the same person.
    await done
    const next = new URLSearchParams(params)
    next.set('doc', n.doc)
    location.search = next.toString()
    return
  }
  showPanel(false)
  const target = document.querySelector(`.comment[data-name="${CSS.escape(n.field)}"]`)
  if (target) {
    target.scrollIntoView({ block: 'center', behavior: 'smooth' })
    target.classList.add('flash')
    setTimeout(() => target.classList.remove('flash'), 1600)
  }
})
inbox.on('unread', renderBell)
inbox.on('status', renderBell)
inbox.on('change', () => { if (!panel.hidden) renderInbox() })
inbox.on('notification', (n) => {
  events.push({ type: 'notification', ...n })
  toast(noteLine(n))
})
inbox.on('error', (e) => events.push({ type: 'inbox-error', ...e }))

// --- undo / redo ------------------------------------------------------------------------------
function renderHistory () {
  $('undo').disabled = !doc.canUndo()
  $('redo').disabled = !doc.canRedo()
}
$('undo').addEventListener('click', () => { doc.undo(); renderHistory() })
$('redo').addEventListener('click', () => { doc.redo(); renderHistory() })
document.addEventListener('keydown', (e) => {
  if (!(e.ctrlKey || e.metaKey) || e.target === title || e.target === commentBox) return
  const k = e.key.toLowerCase()
  if (k === 'z' || k === 'y') {
    e.preventDefault()
    if (k === 'y' || e.shiftKey) doc.redo()
    else doc.undo()
    renderHistory()
  }
})
desc.addEventListener('beforeinput', (e) => {
  if (e.inputType === 'historyUndo' || e.inputType === 'historyRedo') {
    e.preventDefault()
    if (e.inputType === 'historyUndo') doc.undo()
    else doc.redo()
    renderHistory()
  }
})

// --- wiring -----------------------------------------------------------------------------------
doc.on('field', (c) => {
  if (c.name === 'title') renderTitle()
  else if (c.name === 'status') renderStatusField()
  else if (c.name.startsWith('comment:')) renderComments()
  renderHistory()
})
doc.on('text', (c) => {
  if (c.field.startsWith('comment:')) renderComments()
  renderHistory()
})
doc.presence.observe(() => { renderViewers(); renderTyping(); renderCursors() })
setInterval(() => {
  renderStatusField()
  const at = Number($('description-edited').dataset.at || 0)
  if (at && Date.now() - at > 8000) $('description-edited').textContent = ''
}, 5000)

shown = descField.toString()
desc.value = shown
autoGrow()
renderTitle()
renderStatusField()
renderComments()
renderViewers()
renderTyping()
renderCursors()
renderHistory()
renderBell()
$('app').dataset.ready = 'true'
