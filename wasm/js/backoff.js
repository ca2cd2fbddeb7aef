// Reconnect delays: exponential from `minMs` up to `maxMs`, with "equal jitter" (half fixed,
// half random) so that clients cut off together do not all come back in the same instant.
export function backoffDelay (attempt, minMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30))
  return Math.round(ceiling / 2 + random() * (ceiling / 2))
}

// base64 <-> bytes, for the SSE transport (events carry base64 Yjs updates).
export function fromBase64 (text) {
  const bin = atob(text)
  const out = new Uint8Array(bin.length)
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
  return out
}
