// A Node HTTP client configured only by its environment, as an agent started by `vault run` would be.
//
// usage: node node_client.mjs MODE URL...
//   fetch                 Node's global fetch (NODE_USE_ENV_PROXY=1 makes it use HTTPS_PROXY; Node >= 22.21 / 24.5)
//   undici-env            undici fetch with `new EnvHttpProxyAgent()` (reads HTTP(S)_PROXY / NO_PROXY)
//   undici-tunnel         undici `ProxyAgent({uri: <env proxy>, proxyTunnel: true})`: CONNECT even for http://,
//                         then plaintext HTTP inside the tunnel
//   undici-absolute       undici `ProxyAgent({uri: <env proxy>, proxyTunnel: false})`: absolute-form http://
//   axios                 axios (current: CONNECT for https:// targets)
//   axios-legacy          axios 1.16.0, the last release that sends absolute-form `GET https://...` to the proxy
// CA trust comes from NODE_EXTRA_CA_CERTS (read by Node at start-up). Prints one JSON line per URL:
// {"url", "status", "body"} or {"url", "error"}; exits 1 if any request failed.
// Packages are imported per mode, so `fetch` runs without node_modules.
const [mode, ...urls] = process.argv.slice(2)
const envProxy = (url) => (url.startsWith('https:')
  ? process.env.https_proxy ?? process.env.HTTPS_PROXY
  : process.env.http_proxy ?? process.env.HTTP_PROXY)

async function viaFetch (fetchImpl, url, init = {}) {
  const r = await fetchImpl(url, init)
  return { url, status: r.status, body: await r.text() }
}

async function viaAxios (client, url) {
  const r = await client.get(url, { responseType: 'text', transformResponse: (x) => x, validateStatus: () => true })
  return { url, status: r.status, body: r.data }
}

const undici = () => import('undici')
let envAgent
const modes = {
  fetch: async (url) => viaFetch(globalThis.fetch, url),
  'undici-env': async (url) => {
    const { EnvHttpProxyAgent, fetch } = await undici()
    return viaFetch(fetch, url, { dispatcher: (envAgent ??= new EnvHttpProxyAgent()) })
  },
  'undici-tunnel': async (url) => {
    const { ProxyAgent, fetch } = await undici()
    return viaFetch(fetch, url, { dispatcher: new ProxyAgent({ uri: envProxy(url), proxyTunnel: true }) })
  },
  'undici-absolute': async (url) => {
    const { ProxyAgent, fetch } = await undici()
    return viaFetch(fetch, url, { dispatcher: new ProxyAgent({ uri: envProxy(url), proxyTunnel: false }) })
  },
  axios: async (url) => viaAxios((await import('axios')).default, url),
  'axios-legacy': async (url) => viaAxios((await import('axios-legacy')).default, url)
}

if (!modes[mode]) {
  console.error(`usage: node_client.mjs {${Object.keys(modes).join('|')}} URL...`)
  process.exit(2)
}
let failed = false
for (const url of urls) {
  let result
  try {
    result = await modes[mode](url)
  } catch (e) {
    failed = true
    result = { url, error: `${e.name}: ${e.message}${e.cause ? ` (cause: ${e.cause.code ?? ''} ${e.cause.message ?? e.cause})` : ''}` }
  }
  console.log(JSON.stringify(result))
}
process.exit(failed ? 1 : 0)
