// Shared helpers of the browser and Node tests: the real tandem binary on a loopback port,
// headless Chromium through playwright-core, and screenshots saved as artifacts.
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { once } from 'node:events'
import { before, after } from 'node:test'

const here = dirname(fileURLToPath(import.meta.url))
export const repo = resolve(here, '..', '..')
export const artifacts = process.env.TANDEM_ARTIFACTS ?? join(repo, 'target', 'artifacts', 'browser')
mkdirSync(artifacts, { recursive: true })

const bin = process.env.TANDEM_BIN ?? join(repo, 'target', 'debug', 'tandem')

// A running `tandem serve`; restart() brings it back on the same port and data directory.
// `secret` starts it with --auth-secret (tokens required: mint them with token()).
export class Server {
  static async start ({ secret } = {}) {
    const s = new Server(mkdtempSync(join(tmpdir(), 'tandem-browser-')), secret)
    await s._spawn('127.0.0.1:0')
    return s
  }

  constructor (dataDir, secret) {
    this.dataDir = dataDir
    this.secret = secret ?? null
    this.proc = null
    this.addr = null
  }

  // A token for `user` from `tandem token` (the command line a deployment uses).
  token (user, { name, doc = '*', role = 'write', ttl = '1h' } = {}) {
    if (!this.secret) throw new Error('this server runs in open development mode: no tokens')
    const args = ['token', '--secret', this.secret, '--user', user, '--doc', doc, '--role', role, '--ttl', ttl]
    if (name) args.push('--name', name)
    return execFileSync(bin, args, { encoding: 'utf8' }).trim()
  }

  get http () { return `http://${this.addr}` }
  get ws () { return `ws://${this.addr}` }

  async _spawn (addr) {
    // The demo files are found relative to the working directory: run from the repository.
    const args = ['serve', '--addr', addr, '--data-dir', this.dataDir]
    if (this.secret) args.push('--auth-secret', this.secret)
    const proc = spawn(bin, args, {
      cwd: repo,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' }
    })
    this.proc = proc
    let err = ''
    proc.stderr.on('data', (d) => { err += d })
    const listening = new Promise((resolve, reject) => {
      let out = ''
      proc.stdout.on('data', (d) => {
        out += d
        const m = out.match(/tandem listening on (\S+)/)
        if (m) resolve(m[1])
      })
      proc.once('exit', (code) => reject(new Error(`tandem exited (${code}) before listening:\n${err}`)))
    })
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`tandem did not start:\n${err}`)), 30000).unref())
    this.addr = await Promise.race([listening, timeout])
  }

  // Stops the server (SIGTERM: it flushes and exits) and waits until it has exited.
  async stop () {
    if (!this.proc || this.proc.exitCode !== null) return
    const exited = once(this.proc, 'exit')
    this.proc.kill('SIGTERM')
    await exited
  }

  get running () {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null
  }

  async restart () {
    await this.stop()
    await this._spawn(this.addr)
  }

  async close () {
    await this.stop()
    rmSync(this.dataDir, { recursive: true, force: true })
  }
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'
]

export async function launchChromium () {
  const { chromium } = await import('playwright-core')
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS
  })
}

// A tandem server and headless Chromium for the tests of one file: started before them,
// stopped after them. Read `.server` and `.browser` inside the tests.
export function withServerAndChromium () {
  const live = {}
  before(async () => {
    live.server = await Server.start()
    live.browser = await launchChromium()
  })
  after(async () => {
    await live.browser?.close()
    await live.server?.close()
  })
  return live
}

export async function screenshot (page, name) {
  const path = join(artifacts, `${name}.png`)
  await page.screenshot({ path, fullPage: true })
  return path
}

export function uniqueDoc (prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
}
