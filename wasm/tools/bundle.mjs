// Joins the client's ES modules (wasm/js/) into one module, for wasm/build.sh: one file
// compresses better than nine and lets the minifier shorten names across them.
//
// Usage: node bundle.mjs <dir> <entry> <glue> <out>
//   e.g. node bundle.mjs wasm/js index.js tandem_wasm.js pkg/index.js
//
// The modules are concatenated in the order ES modules evaluate them (dependencies first,
// depth first, in import order), so the result runs the same statements in the same order. What
// is removed: imports between the modules and the `export` keyword of every module but the
// entry, whose exports stay (a re-export from another module becomes a plain export). Imports
// of the wasm-bindgen glue stay imports, merged into one. The build stops rather than guess when
// a module does something this join does not preserve: two modules declaring the same top-level
// name, an import that renames, a namespace or default import between the modules, a cycle.
import { parse } from 'acorn'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const [dir, entry, glue, out] = process.argv.slice(2)
if (!out) {
  console.error('usage: node bundle.mjs <dir> <entry> <glue> <out>')
  process.exit(2)
}

function fail (file, node, message) {
  throw new Error(`${file}${node ? ` (offset ${node.start})` : ''}: ${message}`)
}

const source = (file) => `./${file}`
const fileOf = (spec, file, node) => {
  if (!spec.startsWith('./') || spec.slice(2).includes('/')) fail(file, node, `import of ${spec} is not a sibling module`)
  return spec.slice(2)
}

/** The names a top-level statement declares. */
function declared (node, file) {
  switch (node.type) {
    case 'FunctionDeclaration':
    case 'ClassDeclaration':
      return [node.id.name]
    case 'VariableDeclaration':
      return node.declarations.map((d) => {
        if (d.id.type !== 'Identifier') fail(file, d, 'destructuring at the top level')
        return d.id.name
      })
    default:
      return []
  }
}

const order = [] // files, dependencies first
const state = new Map() // file -> 'visiting' | 'done'
const modules = new Map() // file -> { text, ast }

function visit (file) {
  if (state.get(file) === 'done') return
  if (state.get(file) === 'visiting') fail(file, null, 'import cycle')
  state.set(file, 'visiting')
  const text = readFileSync(join(dir, file), 'utf8')
  const ast = parse(text, { ecmaVersion: 'latest', sourceType: 'module' })
  modules.set(file, { text, ast })
  for (const node of ast.body) {
    const spec = node.source?.value
    if (spec === undefined || spec === source(glue)) continue
    visit(fileOf(spec, file, node))
  }
  state.set(file, 'done')
  order.push(file)
}
visit(entry)

const owner = new Map() // top-level name -> file
const claim = (name, file, node) => {
  const other = owner.get(name)
  if (other !== undefined && other !== file) fail(file, node, `${name} is also declared in ${other}`)
  owner.set(name, file)
}
const glueNames = new Set()
let glueDefault = null
const parts = []

for (const file of order) {
  const { text, ast } = modules.get(file)
  const isEntry = file === entry
  let cursor = 0
  let body = ''
  const cut = (node, replacement) => {
    body += text.slice(cursor, node.start) + replacement
    cursor = node.end
  }
  for (const node of ast.body) {
    if (node.type === 'ImportDeclaration') {
      const fromGlue = node.source.value === source(glue)
      if (!fromGlue) fileOf(node.source.value, file, node)
      for (const s of node.specifiers) {
        if (s.type === 'ImportSpecifier' && s.imported.name === s.local.name) {
          if (fromGlue) glueNames.add(s.local.name)
        } else if (s.type === 'ImportDefaultSpecifier' && fromGlue) {
          if (glueDefault !== null && glueDefault !== s.local.name) fail(file, s, 'the glue is imported under two names')
          glueDefault = s.local.name
        } else {
          fail(file, s, 'an import that renames, or a default or namespace import between modules')
        }
      }
      cut(node, '')
    } else if (node.type === 'ExportNamedDeclaration' && node.declaration) {
      for (const name of declared(node.declaration, file)) claim(name, file, node)
      if (!isEntry) cut(node, text.slice(node.declaration.start, node.declaration.end))
    } else if (node.type === 'ExportNamedDeclaration') {
      if (!isEntry) fail(file, node, 'only the entry may have an export list')
      if (node.source && node.source.value !== source(glue)) {
        fileOf(node.source.value, file, node)
        const list = node.specifiers.map((s) => text.slice(s.start, s.end)).join(', ')
        cut(node, `export { ${list} }`)
      }
    } else if (node.type === 'ExportDefaultDeclaration') {
      fail(file, node, 'default export')
    } else if (node.type === 'ExportAllDeclaration') {
      if (!isEntry || node.source.value !== source(glue) || !node.exported) {
        fail(file, node, 'only the entry may re-export, and only the glue as a namespace')
      }
    } else {
      for (const name of declared(node, file)) claim(name, file, node)
    }
  }
  body += text.slice(cursor)
  parts.push(`// ${file}\n${body.trim()}\n`)
}

for (const name of [...glueNames, ...(glueDefault ? [glueDefault] : [])]) {
  if (owner.has(name)) fail(owner.get(name), null, `${name} is also imported from the glue`)
}
const defaultPart = glueDefault ? `${glueDefault}${glueNames.size ? ', ' : ''}` : ''
const namedPart = glueNames.size ? `{ ${[...glueNames].join(', ')} }` : ''
const header = defaultPart || namedPart ? `import ${defaultPart}${namedPart} from '${source(glue)}'\n` : ''
writeFileSync(out, header + parts.join('\n'))
