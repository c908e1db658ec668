// A WebSocket client (the `ws` package) through the environment's proxy. `ws` has no proxy support of its own;
// the usual way is an `HttpsProxyAgent` (CONNECT) built from HTTPS_PROXY, which is what this does.
//
// usage: node node_ws.mjs URL... - for each URL: connect, read the server's first message, send a text message, read
// its echo, close. Prints one JSON line per URL: {"url", "first", "echo"} or {"url", "error"}; exit 1 if any failed.
import { HttpsProxyAgent } from 'https-proxy-agent'
import WebSocket from 'ws'

const proxy = process.env.https_proxy ?? process.env.HTTPS_PROXY

function talk (url) {
  return new Promise((resolve) => {
    const messages = []
    const ws = new WebSocket(url, { agent: proxy ? new HttpsProxyAgent(proxy) : undefined, handshakeTimeout: 30000 })
    const timer = setTimeout(() => { ws.terminate(); resolve({ url, error: 'timeout' }) }, 30000)
    ws.on('open', () => {})
    ws.on('message', (data) => {
      messages.push(data.toString())
      if (messages.length === 1) ws.send('hello through the proxy')
      else ws.close()
    })
    ws.on('close', () => { clearTimeout(timer); resolve(messages.length === 2 ? { url, first: messages[0], echo: messages[1] } : { url, error: `closed after ${messages.length} message(s)` }) })
    ws.on('error', (e) => { clearTimeout(timer); resolve({ url, error: `${e.name}: ${e.message}` }) })
  })
}

let failed = false
for (const url of process.argv.slice(2)) {
  const r = await talk(url)
  if (r.error) failed = true
  console.log(JSON.stringify(r))
}
process.exit(failed ? 1 : 0)
