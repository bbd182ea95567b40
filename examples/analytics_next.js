// Runs Segment's browser SDK, @segment/analytics-next (its UMD bundle from npm), in headless
// Chromium on a page from a second local origin, and has it send all six calls to a pixel.py:
//   node examples/analytics_next.js http://127.0.0.1:8000 standard|batching|cdn|disallowed [PAGE_PORT]
// PAGE_PORT is where the page is served from (http://127.0.0.1:PAGE_PORT, the origin to give
// pixel's --allow-origin); without it, any free port.
// standard:   the default delivery, one fetch per call to /v1/{i,t,p,s,g,a};
// batching:   deliveryStrategy 'batching' (credentials: 'include'), with a size and timeout
//             that never flush on their own, then a real navigation away, so the SDK's
//             pagehide handler sends the batch to /v1/b with a keepalive fetch;
// cdn:        as the README has it, AnalyticsBrowser.load({writeKey, cdnURL: pixel}): the SDK
//             loads its settings from pixel's /v1/projects/KEY/settings, and sends where
//             they say;
// disallowed: as standard, for a pixel started with an --allow-origin that leaves the page
//             out (every request should fail CORS and nothing be written).
// But in cdn mode the SDK gets its settings inline (cdnSettings), so it never asks a CDN for
// anything, and its own metrics go to pixel's /v1/m. It prints one JSON object: mode, calls,
// consoleErrors, failedRequests (with Chromium's corsError), sdkVersion, and more: requests
// (each the page made to pixel as DevTools saw it, with the messageIds in its body; the
// keepalive batch sent while the page unloads is not reported there), pixelAccepted (the
// change in pixel's /health "accepted" over the run: batching mode waits on it for the
// batch), offOriginRequests (should be []), elapsedMs, timedOut. It exits 0 when the SDK ran,
// whatever pixel answered; 1 when Chromium or the SDK could not run at all. The test reads
// pixel's log to judge exactly-once.
// Needs: npm install --prefix DIR @segment/analytics-next ws; PIXEL_NODE_MODULES=DIR/node_modules
// (default /tmp/ajs/node_modules); Chromium as `chromium` (or PIXEL_CHROMIUM).
'use strict'
const childProcess = require('child_process')
const fs = require('fs')
const http = require('http')
const os = require('os')
const path = require('path')

const MODULES = process.env.PIXEL_NODE_MODULES || '/tmp/ajs/node_modules'
const CHROMIUM = process.env.PIXEL_CHROMIUM || 'chromium'
const TIMEOUT_MS = Number(process.env.PIXEL_BROWSER_TIMEOUT_MS || 20000)
const QUIET_MS = 750        // no request to pixel in flight for this long: the page is done
const MODES = ['standard', 'batching', 'cdn', 'disallowed']
const WRITE_KEY = 'AJS_NEXT_KEY'

const started = Date.now()

function fail (message) {
  process.stderr.write('analytics_next.js: ' + message + '\n')
  process.exit(1)
}

const [pixelArg, mode, pagePortArg = '0'] = process.argv.slice(2)
if (!pixelArg || !MODES.includes(mode) || !/^\d{1,5}$/.test(pagePortArg)) {
  fail('usage: node analytics_next.js PIXEL_BASE_URL ' + MODES.join('|') + ' [PAGE_PORT]')
}
const pixel = new URL(pixelArg)
const pixelOrigin = pixel.origin
// What the SDK calls apiHost: host[:port] and path, no scheme; it posts to apiHost + '/t' etc.
const apiHost = pixel.host + pixel.pathname.replace(/\/+$/, '') + '/v1'
const protocol = pixel.protocol.replace(':', '')

let WebSocket, sdkDir, sdkVersion
try {
  WebSocket = require(path.join(MODULES, 'ws'))
  sdkDir = path.join(MODULES, '@segment', 'analytics-next')
  sdkVersion = require(path.join(sdkDir, 'package.json')).version
} catch (error) {
  fail('cannot load ws or @segment/analytics-next from ' + MODULES + ': ' + error.message)
}
const bundleDir = path.join(sdkDir, 'dist', 'umd')
if (!fs.existsSync(path.join(bundleDir, 'index.js'))) fail('no UMD bundle in ' + bundleDir)

// The Segment.io destination's settings, as Segment's CDN would send them for this source,
// and the load options that override them (the two are merged, options winning).
const segmentio = { apiHost, protocol }
if (mode === 'batching') {
  segmentio.deliveryStrategy = {
    strategy: 'batching',
    // Neither the size nor the timeout is reached: only the pagehide flush sends.
    config: { size: 100, timeout: 60000, credentials: 'include' }
  }
}
const cdnSettings = {
  integrations: { 'Segment.io': { apiKey: WRITE_KEY, apiHost, protocol } },
  plan: {},
  enabledMiddleware: {},
  metrics: { sampleRate: 1, flushTimer: 300 }   // the SDK's own counters, to /v1/m
}
const loadOptions = { integrations: { 'Segment.io': segmentio } }

const CALLS = [
  ['identify', ['ajs-user-1', { email: 'ajs@example.com', plan: 'pro' }]],
  ['track', ['AJS Order Completed', { orderId: 'ajs-o-1', revenue: 42.5 }]],
  ['page', ['AJS Docs', 'AJS Pricing', { section: 'ajs-pricing' }]],
  ['screen', ['AJS Screens', 'AJS Home', { variant: 'ajs-b' }]],
  ['group', ['ajs-group-1', { name: 'AJS Co', employees: 12 }]],
  ['alias', ['ajs-user-1', 'ajs-previous-1']]
]

function pageHtml (origin) {
  const config = JSON.stringify(mode === 'cdn'
    ? { writeKey: WRITE_KEY, cdnURL: pixelOrigin + pixel.pathname.replace(/\/+$/, ''),
        loadOptions: {}, calls: CALLS }
    : { writeKey: WRITE_KEY, cdnSettings, loadOptions, calls: CALLS })
    .replace(/</g, '\\u003c')
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>analytics-next to pixel</title>
<link rel="icon" href="data:,">
<script>
  // The snippet's CDN override: any chunk the bundle loads comes from this server, not Segment's.
  window.analytics = { _cdn: ${JSON.stringify(origin)} }
</script>
<script src="/analytics-next/bundles/index.js"></script>
</head><body><p>analytics-next to pixel</p>
<script>
(async () => {
  const config = ${config}
  const done = []
  const report = (error) => window.pixelReport(JSON.stringify({ calls: done, error }))
  try {
    if (!window.AnalyticsNext) throw new Error('the UMD bundle did not define AnalyticsNext')
    const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(config.cdnURL
      ? { writeKey: config.writeKey, cdnURL: config.cdnURL }
      : { writeKey: config.writeKey, cdnSettings: config.cdnSettings }, config.loadOptions)
    for (const [name, args] of config.calls) {
      await analytics[name](...args)   // resolves once the Segment.io destination has it
      done.push(name)
    }
    report(null)
  } catch (error) {
    report(String(error && error.stack || error))
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
  if (url.pathname === '/') return send(200, 'text/html; charset=utf-8', pageHtml(pageOrigin))
  if (url.pathname === '/bye') {
    return send(200, 'text/html; charset=utf-8', '<link rel="icon" href="data:,"><p>bye</p>')
  }
  const bundle = /^\/analytics-next\/bundles\/([\w.-]+\.js)$/.exec(url.pathname)
  if (bundle && fs.existsSync(path.join(bundleDir, bundle[1]))) {
    return send(200, 'application/javascript', fs.readFileSync(path.join(bundleDir, bundle[1])))
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
// null if it cannot be had. Only the batching mode needs it: the keepalive fetch that the
// SDK makes while the page unloads is not reported over the DevTools protocol, so this is how
// the run knows the batch has arrived before it closes the browser.
function pixelAccepted () {
  return new Promise((resolve) => {
    const req = http.get(pixelOrigin + '/health', { timeout: 2000 }, (res) => {
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
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixel-ajs-'))
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

function messageIds (url, postData) {
  try {
    const body = JSON.parse(postData)
    if (Array.isArray(body.batch)) return body.batch.map((event) => event.messageId)
    if (Array.isArray(body.series)) return []   // /m: metrics, not events
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
          const old = requests.get(p.requestId)
          requests.set(p.requestId, { method, path: url.slice(pixelOrigin.length), type: p.type,
            status: null, done: false, keepalive: undefined,
            messageIds: postData ? messageIds(url, postData) : [], ...(old && { redirected: true }) })
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
  if (!reported) throw new Error('the page never reported: the SDK did not run. Console: ' +
    JSON.stringify(consoleErrors))
  if (reported.error && !reported.calls.length) {
    throw new Error('the SDK failed on the page: ' + reported.error)
  }

  const toPixel = () => [...requests.values()]
  let acceptedDuringRun = null
  if (mode === 'batching') {
    // A real navigation away: pagehide (and visibilitychange) make the batching dispatcher
    // send its buffer to /v1/b with keepalive, from a document that is being torn down.
    await send('Page.navigate', { url: pageOrigin + '/bye' })
    if (acceptedBefore === null) {
      await sleep(2000)   // no /health to ask: a fixed wait (loopback takes milliseconds)
    } else {
      while (Date.now() < deadline) {
        const accepted = await pixelAccepted()
        if (accepted !== null && accepted - acceptedBefore >= reported.calls.length) break
        await sleep(50)
      }
    }
  }
  // Then until nothing to pixel has been in flight for a while (retries would show up here).
  while (Date.now() < deadline &&
         (toPixel().some((r) => !r.done) || Date.now() - lastActivity < QUIET_MS)) {
    await sleep(25)
  }

  const acceptedAfter = await pixelAccepted()
  if (acceptedBefore !== null && acceptedAfter !== null) acceptedDuringRun = acceptedAfter - acceptedBefore
  const result = {
    mode,
    calls: reported.calls,
    consoleErrors,
    failedRequests,
    sdkVersion,
    pageError: reported.error,
    requests: toPixel().map(({ done, ...request }) => ({ ...request, finished: done })),
    offOriginRequests: offOrigin,
    pixelAccepted: acceptedDuringRun,   // events pixel's /health says it wrote during the run
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
