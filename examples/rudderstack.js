// Runs RudderStack's browser SDK, @rudderstack/analytics-js 3.x (its bundled UMD build from
// npm, so no plugin is fetched from RudderStack's CDN), in headless Chromium on a page from a
// second local origin, with a pixel.py as its data plane, and has it make five calls:
//   node examples/rudderstack.js http://127.0.0.1:8000 config|beacon|disallowed [PAGE_PORT]
// PAGE_PORT is where the page is served from (http://127.0.0.1:PAGE_PORT, the origin to give
// pixel's --allow-origin); without it, any free port.
// config:     configUrl is pixel: the SDK fetches GET /sourceConfig/?...&writeKey=K (Basic auth,
//             after a CORS preflight), and with sendAdblockPage a HEAD /sourceConfig/?view=ad,
//             then posts each event to /v1/<type> (XHR, Basic auth);
// beacon:     useBeacon: true with the source config given inline (getSourceConfig): the
//             events wait in the beacon queue until a real navigation away flushes them with
//             navigator.sendBeacon to /beacon/v1/batch?writeKey=K, a text/plain body and no
//             Authorization;
// disallowed: as config, for a pixel started with an --allow-origin that leaves the page out
//             (the source config fails CORS, so the SDK never loads and nothing is written).
// It prints one JSON object: mode, calls (those made), ready (whether the SDK loaded),
// consoleErrors, failedRequests (with Chromium's corsError), requests (each the page made to
// pixel as DevTools saw it), pixelAccepted (the change in pixel's /health "accepted" over the
// run), offOriginRequests (should be []), sdkVersion, elapsedMs, timedOut. It exits 0 when the
// page ran, whatever pixel answered (a page whose SDK never loaded says so in its report); 1
// when Chromium or the SDK could not run at all. The test reads pixel's log to judge
// exactly-once.
// Needs: npm install --prefix DIR @rudderstack/analytics-js ws;
// PIXEL_NODE_MODULES=DIR/node_modules (default /tmp/ajs/node_modules); Chromium as `chromium`
// (or PIXEL_CHROMIUM).
'use strict'
const childProcess = require('child_process')
const fs = require('fs')
const http = require('http')
const os = require('os')
const path = require('path')

const MODULES = process.env.PIXEL_NODE_MODULES || '/tmp/ajs/node_modules'
const CHROMIUM = process.env.PIXEL_CHROMIUM || 'chromium'
const TIMEOUT_MS = Number(process.env.PIXEL_BROWSER_TIMEOUT_MS || 20000)
const READY_MS = 8000       // the page gives up on the SDK's ready() after this
const QUIET_MS = 750        // no request to pixel in flight for this long: the page is done
const MODES = ['config', 'beacon', 'disallowed']
const WRITE_KEY = 'RS_BROWSER_KEY'

const started = Date.now()

function fail (message) {
  process.stderr.write('rudderstack.js: ' + message + '\n')
  process.exit(1)
}

const [pixelArg, mode, pagePortArg = '0'] = process.argv.slice(2)
if (!pixelArg || !MODES.includes(mode) || !/^\d{1,5}$/.test(pagePortArg)) {
  fail('usage: node rudderstack.js PIXEL_BASE_URL ' + MODES.join('|') + ' [PAGE_PORT]')
}
const pixel = new URL(pixelArg)
const pixelOrigin = pixel.origin
const dataPlaneUrl = pixelOrigin + pixel.pathname.replace(/\/+$/, '')

let WebSocket, sdkDir, sdkVersion
try {
  WebSocket = require(path.join(MODULES, 'ws'))
  sdkDir = path.join(MODULES, '@rudderstack', 'analytics-js')
  sdkVersion = require(path.join(sdkDir, 'package.json')).version
} catch (error) {
  fail('cannot load ws or @rudderstack/analytics-js from ' + MODULES + ': ' + error.message)
}
const bundle = path.join(sdkDir, 'dist', 'npm', 'modern', 'bundled', 'umd', 'index.js')
if (!fs.existsSync(bundle)) fail('no bundled UMD build at ' + bundle)

// What RudderStack's control plane would answer for this source, for the inline modes: the
// same fields pixel's /sourceConfig/ serves.
const SOURCE_CONFIG = {
  source: {
    id: WRITE_KEY, name: 'pixel', writeKey: WRITE_KEY, enabled: true, destinations: [],
    config: { statsCollection: { errors: { enabled: false }, metrics: { enabled: false } } }
  }
}
const loadOptions = { logLevel: 'ERROR' }
if (mode === 'beacon') {
  loadOptions.useBeacon = true
  // Neither the count nor the interval is reached: only the page-leave flush sends.
  loadOptions.beaconQueueOptions = { maxItems: 100, flushQueueInterval: 600000 }
} else {
  loadOptions.configUrl = dataPlaneUrl
  loadOptions.sendAdblockPage = true   // and so a HEAD /sourceConfig/?view=ad, its ad-block check
}

const CALLS = [
  ['identify', ['rs-user-1', { email: 'rs@example.com', plan: 'pro' }]],
  ['track', ['RS Order Completed', { orderId: 'rs-o-1', revenue: 42.5 }]],
  ['page', ['RS Docs', 'RS Pricing', { section: 'rs-pricing' }]],
  ['group', ['rs-group-1', { name: 'RS Co', employees: 12 }]],
  ['alias', ['rs-user-1', 'rs-previous-1']]
]

function pageHtml () {
  const config = JSON.stringify({ writeKey: WRITE_KEY, dataPlaneUrl, loadOptions, calls: CALLS,
    sourceConfig: mode === 'beacon' ? SOURCE_CONFIG : null, readyMs: READY_MS })
    .replace(/</g, '\\u003c')
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>RudderStack to pixel</title>
<link rel="icon" href="data:,">
<script src="/rudderstack/index.js"></script>
</head><body><p>RudderStack to pixel</p>
<script>
(() => {
  const config = ${config}
  const done = []
  const report = (ready, error) =>
    window.pixelReport(JSON.stringify({ calls: done, ready, error }))
  try {
    if (!window.rudderanalytics || !window.rudderanalytics.RudderAnalytics) {
      throw new Error('the UMD bundle did not define rudderanalytics.RudderAnalytics')
    }
    const analytics = new window.rudderanalytics.RudderAnalytics()
    const options = config.loadOptions
    if (config.sourceConfig) options.getSourceConfig = () => config.sourceConfig
    const giveUp = setTimeout(() => report(false, 'ready() never came'), config.readyMs)
    analytics.ready(async () => {
      clearTimeout(giveUp)
      try {
        for (const [name, args] of config.calls) {
          // The callback runs once the SDK has queued the event for the data plane.
          await new Promise((resolve) => analytics[name](...args, resolve))
          done.push(name)
        }
        report(true, null)
      } catch (error) {
        report(true, String(error && error.stack || error))
      }
    })
    analytics.load(config.writeKey, config.dataPlaneUrl, options)
  } catch (error) {
    report(false, String(error && error.stack || error))
  }
})()
</script></body></html>`
}

// ---- the page's origin: a second local HTTP server ----------------------------------------

const served = []   // paths the page server was asked for
const pageServer = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1')
  served.push(req.method + ' ' + url.pathname)
  const send = (status, type, body) => {
    res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store' })
    res.end(body)
  }
  if (url.pathname === '/') return send(200, 'text/html; charset=utf-8', pageHtml())
  if (url.pathname === '/bye') {
    return send(200, 'text/html; charset=utf-8', '<link rel="icon" href="data:,"><p>bye</p>')
  }
  if (url.pathname === '/rudderstack/index.js') {
    return send(200, 'application/javascript', fs.readFileSync(bundle))
  }
  send(404, 'text/plain', 'not found\n')
})
let pageOrigin

// ---- Chromium and a minimal DevTools protocol client --------------------------------------

let chromium, userDataDir, socket
const children = { exited: false }

function cleanup () {
  try { if (socket) socket.terminate() } catch (_) {}
  if (chromium && !children.exited) {
    try { process.kill(-chromium.pid, 'SIGKILL') } catch (_) {}   // its own process group
  }
  try { pageServer.close() } catch (_) {}
  if (userDataDir) {
    try { fs.rmSync(userDataDir, { recursive: true, force: true }) } catch (_) {}
  }
}

const hardStop = setTimeout(() => {
  cleanup()
  fail('gave up after ' + (TIMEOUT_MS + 15000) + ' ms')
}, TIMEOUT_MS + 15000)
hardStop.unref()

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// pixel's count of accepted events, from its /health (asked server-side, with no Origin);
// null if it cannot be had. A beacon sent while the page unloads is not reported over the
// DevTools protocol, so this is how the run knows the events have arrived.
function pixelAccepted () {
  return new Promise((resolve) => {
    const req = http.get(dataPlaneUrl + '/health', { timeout: 2000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => {
        let accepted = null
        try { accepted = JSON.parse(body).accepted } catch (_) {}
        resolve(Number.isInteger(accepted) ? accepted : null)
      })
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(null))
  })
}

async function launchChromium () {
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixel-rs-'))
  chromium = childProcess.spawn(CHROMIUM, ['--headless', '--no-sandbox', '--disable-gpu',
    '--disable-background-networking', '--no-first-run', '--remote-debugging-port=0',
    '--user-data-dir=' + userDataDir, 'about:blank'],
  { detached: true, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  chromium.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-4000) })
  chromium.on('error', (error) => { children.exited = true; stderr += String(error) })
  chromium.on('exit', () => { children.exited = true })
  const portFile = path.join(userDataDir, 'DevToolsActivePort')
  for (const deadline = Date.now() + 10000; Date.now() < deadline;) {
    if (children.exited) break
    const lines = fs.existsSync(portFile) ? fs.readFileSync(portFile, 'utf8').split('\n') : []
    if (lines.length >= 2 && lines[1]) return 'ws://127.0.0.1:' + lines[0].trim() + lines[1].trim()
    await sleep(50)
  }
  throw new Error('Chromium did not start (' + CHROMIUM + '): ' + stderr.trim().slice(-1000))
}

function connect (url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 })
    const pending = new Map()
    const listeners = []
    let nextId = 1
    ws.on('open', () => resolve({
      send (method, params = {}, sessionId) {
        const id = nextId++
        ws.send(JSON.stringify({ id, method, params, sessionId }))
        return new Promise((resolve, reject) => pending.set(id, { resolve, reject, method }))
      },
      on (listener) { listeners.push(listener) }
    }))
    ws.on('error', reject)
    ws.on('message', (data) => {
      const message = JSON.parse(data)
      if (message.id && pending.has(message.id)) {
        const { resolve, reject, method } = pending.get(message.id)
        pending.delete(message.id)
        if (message.error) reject(new Error(method + ': ' + message.error.message))
        else resolve(message.result)
      } else if (message.method) {
        for (const listener of listeners) listener(message)
      }
    })
    socket = ws
  })
}

// ---- the run -------------------------------------------------------------------------------

function argText (arg) {
  if (!arg) return ''
  if ('value' in arg) return typeof arg.value === 'string' ? arg.value : JSON.stringify(arg.value)
  return arg.description || arg.type
}

function messageIds (postData) {
  try {
    const body = JSON.parse(postData)
    if (Array.isArray(body.batch)) return body.batch.map((event) => event.messageId)
    return body.messageId ? [body.messageId] : []
  } catch (_) {
    return []
  }
}

async function main () {
  await new Promise((resolve, reject) => {
    pageServer.once('error', reject)
    pageServer.listen(Number(pagePortArg), '127.0.0.1', resolve)
  })
  pageOrigin = 'http://127.0.0.1:' + pageServer.address().port

  const acceptedBefore = await pixelAccepted()
  const cdp = await connect(await launchChromium())
  const { product } = await cdp.send('Browser.getVersion')
  const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank' })
  const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true })
  const send = (method, params) => cdp.send(method, params, sessionId)

  const consoleErrors = []
  const failedRequests = []
  const requests = new Map()   // requestId -> what the page sent to pixel and what came back
  const offOrigin = []         // requests to anything but pixel and the page's own server
  let reported = null
  let lastActivity = Date.now()

  cdp.on((message) => {
    if (message.sessionId !== sessionId) return
    const p = message.params
    switch (message.method) {
      case 'Runtime.bindingCalled':
        if (p.name === 'pixelReport') reported = JSON.parse(p.payload)
        break
      case 'Runtime.consoleAPICalled':
        if (p.type === 'error' || p.type === 'assert') {
          consoleErrors.push(p.args.map(argText).join(' '))
        }
        break
      case 'Runtime.exceptionThrown':
        consoleErrors.push('uncaught: ' + ((p.exceptionDetails.exception &&
          p.exceptionDetails.exception.description) || p.exceptionDetails.text))
        break
      case 'Log.entryAdded':
        if (p.entry.level === 'error') {
          consoleErrors.push(p.entry.source + ': ' + p.entry.text +
            (p.entry.url ? ' (' + p.entry.url + ')' : ''))
        }
        break
      case 'Network.requestWillBeSent': {
        const { url, method, postData } = p.request
        if (url.startsWith(pixelOrigin + '/')) {
          lastActivity = Date.now()
          requests.set(p.requestId, { method, path: url.slice(pixelOrigin.length), type: p.type,
            status: null, done: false, messageIds: postData ? messageIds(postData) : [] })
        } else if (!url.startsWith(pageOrigin + '/') && !/^(about|data|blob):/.test(url)) {
          offOrigin.push(p.request.method + ' ' + url)
        }
        break
      }
      case 'Network.responseReceived': {
        const request = requests.get(p.requestId)
        if (request) {
          lastActivity = Date.now()
          request.status = p.response.status
        }
        break
      }
      case 'Network.loadingFinished': {
        const request = requests.get(p.requestId)
        if (request) {
          lastActivity = Date.now()
          request.done = true
        }
        break
      }
      case 'Network.loadingFailed': {
        const request = requests.get(p.requestId)
        if (request) {
          lastActivity = Date.now()
          request.done = true
          request.error = p.errorText
        }
        failedRequests.push({
          url: request ? pixelOrigin + request.path : p.requestId,
          method: request && request.method,
          type: p.type,
          errorText: p.errorText,
          canceled: p.canceled || false,
          blockedReason: p.blockedReason,
          corsError: p.corsErrorStatus && p.corsErrorStatus.corsError,
          corsErrorParameter: p.corsErrorStatus && p.corsErrorStatus.failedParameter
        })
        break
      }
    }
  })

  await send('Runtime.enable')
  await send('Log.enable')
  await send('Network.enable', { maxPostDataSize: 1024 * 1024 })
  await send('Page.enable')
  await send('Runtime.addBinding', { name: 'pixelReport' })
  await send('Page.navigate', { url: pageOrigin + '/' })

  const deadline = started + TIMEOUT_MS
  while (!reported && Date.now() < deadline) await sleep(25)
  if (!reported) throw new Error('the page never reported. Console: ' + JSON.stringify(consoleErrors))

  const toPixel = () => [...requests.values()]
  if (reported.ready && mode === 'beacon') {
    // A real navigation away: the page-leave handler flushes the beacon queue.
    await send('Page.navigate', { url: pageOrigin + '/bye' })
  }
  if (reported.ready && acceptedBefore !== null) {
    while (Date.now() < deadline) {   // until pixel has written every call (or the deadline)
      const accepted = await pixelAccepted()
      if (accepted !== null && accepted - acceptedBefore >= reported.calls.length) break
      await sleep(50)
    }
  }
  // Then until nothing to pixel has been in flight for a while (retries would show up here).
  while (Date.now() < deadline &&
         (toPixel().some((r) => !r.done) || Date.now() - lastActivity < QUIET_MS)) {
    await sleep(25)
  }

  const acceptedAfter = await pixelAccepted()
  const result = {
    mode,
    calls: reported.calls,
    ready: reported.ready,
    pageError: reported.error,
    consoleErrors,
    failedRequests,
    sdkVersion,
    requests: toPixel().map(({ done, ...request }) => ({ ...request, finished: done })),
    offOriginRequests: offOrigin,
    pixelAccepted: acceptedBefore !== null && acceptedAfter !== null
      ? acceptedAfter - acceptedBefore : null,
    pageServed: served,
    browser: product,
    pageOrigin,
    elapsedMs: Date.now() - started,
    timedOut: Date.now() >= deadline
  }
  try { await Promise.race([cdp.send('Browser.close'), sleep(2000)]) } catch (_) {}
  for (const stop = Date.now() + 3000; !children.exited && Date.now() < stop;) await sleep(25)
  cleanup()
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exit(0)
}

main().catch((error) => {
  cleanup()
  fail(error && error.stack ? error.stack : String(error))
})
