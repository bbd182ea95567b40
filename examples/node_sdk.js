// Sends all six Segment calls to a pixel.py through Segment's own Node SDK,
// @segment/analytics-node. Used by test_pixel.NodeSdk (which .ci/run makes required):
//   node examples/node_sdk.js http://127.0.0.1:8000
// Under a WSGI prefix the SDK drops the host's path (new URL(path, host)): give it as `path`:
//   node examples/node_sdk.js http://127.0.0.1:8000 /collect/v1/batch
// Prints the SDK's version; exits 1 if the SDK reports any error.
const { Analytics } = require('@segment/analytics-node')
const { version } = require('@segment/analytics-node/package.json')

async function main () {
  const errors = []
  const analytics = new Analytics({
    writeKey: 'NODE_KEY',
    host: process.argv[2],
    path: process.argv[3] || '/v1/batch',
    maxEventsInBatch: 3,
    maxRetries: 0
  })
  analytics.on('error', (error) => errors.push(String(error && (error.reason || error.message || error))))
  analytics.track({ userId: 'n1', event: 'Order Completed', properties: { revenue: 42 } })
  analytics.identify({ userId: 'n1', traits: { email: 'peek@email.poke' } })
  analytics.page({ userId: 'n1', category: 'Docs', name: 'Pricing', properties: { url: 'https://x.io/pricing' } })
  analytics.screen({ userId: 'n1', name: 'Home' })
  analytics.group({ userId: 'n1', groupId: 'g1', traits: { name: 'Pokemon' } })
  analytics.alias({ userId: 'n1', previousId: 'p1' })
  await analytics.closeAndFlush({ timeout: 10000 })
  console.log('@segment/analytics-node ' + version)
  if (errors.length) {
    console.error(errors.join('\n'))
    process.exit(1)
  }
}

main().catch((error) => { console.error(error); process.exit(1) })
