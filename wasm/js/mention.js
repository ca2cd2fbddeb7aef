// Mentions in text fields, written in the markup react-mentions uses: `@[Display Name](user-id)`.
// The server finds them in inserted text and notifies the user named by the id (the display
// name is only what readers see).
//
//   insertMention(doc.text('comment:1'), 6, { id: 'bob', name: 'Bob' })   // "Hello @[Bob](bob)"
//   parseMentions('Hello @[Bob](bob)')  // [{ index: 6, length: 11, id: 'bob', name: 'Bob' }]

const MENTION = /@\[([^[\]\n]+)\]\(([^()[\]\s]+)\)/g

// The markup of a mention of `user` ({id, name}). Brackets and line breaks leave the display
// name (they would end it early); an id that cannot be written in the markup (spaces,
// brackets, parentheses) is refused.
export function mentionMarkup (user) {
  const id = String(user?.id ?? '')
  if (!/^[^()[\]\s]+$/.test(id)) throw new TypeError(`tandem: cannot mention user id ${JSON.stringify(id)}`)
  const name = String(user.name ?? id).replace(/[[\]\n\r]/g, '').trim() || id
  return `@[${name}](${id})`
}

// Inserts a mention of `user` into text field `text` (a TextField) at UTF-16 offset `index`, as
// one edit; returns the offset just after it.
export function insertMention (text, index, user) {
  const markup = mentionMarkup(user)
  text.insert(index, markup)
  return index + markup.length
}

// The mentions in a string, in order: [{index, length, id, name}] (offsets in UTF-16 units).
export function parseMentions (string) {
  const out = []
  for (const m of String(string).matchAll(MENTION)) {
    out.push({ index: m.index, length: m[0].length, id: m[2], name: m[1] })
  }
  return out
}
