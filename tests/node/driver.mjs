// What the end-to-end clients (client.mjs, hocuspocus.mjs) share: event-driven waits with a
// timeout, and the loop that reads one JSON command per stdin line and answers one JSON line.
import readline from 'node:readline';

// Resolves once `check()` holds, re-checking on every event `subscribe` delivers; rejects after
// `timeoutMs` (default 10000).
export function waitFor(check, subscribe, unsubscribe, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    if (check()) return resolve();
    const timer = setTimeout(() => { unsubscribe(on); reject(new Error('timeout')); }, timeoutMs);
    const on = () => { if (check()) { clearTimeout(timer); unsubscribe(on); resolve(); } };
    subscribe(on);
  });
}

// Runs `handle(command)` for each stdin line, in order, and writes `{ok: true, ...result}` or
// `{ok: false, error}`; calls `onEnd` and exits when stdin closes.
export function serveCommands(handle, onEnd) {
  const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
  const rl = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  rl.on('line', (line) => {
    queue = queue.then(async () => {
      try {
        reply({ ok: true, ...(await handle(JSON.parse(line))) });
      } catch (e) {
        reply({ ok: false, error: String(e && e.message || e) });
      }
    });
  });
  rl.on('close', () => { onEnd(); process.exit(0); });
}
