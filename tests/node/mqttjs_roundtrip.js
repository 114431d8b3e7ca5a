// MQTT.js against tern over WebSocket: subscribe, publish at QoS 0/1/2 from a second client,
// receive, and check what flespi's own JavaScript clients rely on (v5: `cid` and `timestamp`
// user properties on every delivery; no Assigned Client Identifier for an own id by default).
//
// Usage: node mqttjs_roundtrip.js URL VERSION(3|4|5) [CAFILE]
//   URL: ws://127.0.0.1:PORT, ws://127.0.0.1:PORT/mqtt, wss://127.0.0.1:PORT/...
//   CAFILE: the CA to trust for wss (the server certificate must be valid for `localhost`).
// Prints "ok" and exits 0 when every check passed; prints what failed and exits 1 otherwise.
'use strict'

const fs = require('fs')
const mqtt = require('mqtt')

const [url, versionArg, caFile] = process.argv.slice(2)
const version = Number(versionArg)
if (!url || ![3, 4, 5].includes(version)) {
  console.error('usage: node mqttjs_roundtrip.js URL VERSION(3|4|5) [CAFILE]')
  process.exit(2)
}

const failures = []
const timer = setTimeout(() => {
  console.log(`timed out; ${failures.join('; ')}`)
  process.exit(1)
}, 10000)

function options (clientId) {
  const opts = {
    clientId,
    protocolVersion: version,
    connectTimeout: 5000,
    reconnectPeriod: 0,
    keepalive: 30
  }
  if (version === 3) opts.protocolId = 'MQIsdp'
  if (caFile) {
    opts.ca = fs.readFileSync(caFile)
    opts.rejectUnauthorized = true
    opts.wsOptions = { servername: 'localhost' }
  }
  return opts
}

function connect (clientId) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, options(clientId))
    client.once('connect', (connack) => resolve({ client, connack }))
    client.once('error', reject)
    client.once('close', () => reject(new Error(`${clientId}: connection closed`)))
  })
}

async function main () {
  const tag = `${version}-${url.startsWith('wss') ? 'wss' : 'ws'}-${url.length}`
  const { client: sub, connack } = await connect(`mqttjs-sub-${tag}`)
  if (version === 5) {
    const props = connack.properties || {}
    // mqtt.echo_client_id defaults to false: the client's own id is not echoed back.
    if (props.assignedClientIdentifier) failures.push('CONNACK echoes the own id as Assigned Client Identifier')
  }
  const received = []
  const done = new Promise((resolve) => {
    sub.on('message', (topic, payload, packet) => {
      received.push({ topic, payload: payload.toString(), packet })
      if (received.length === 3) resolve()
    })
  })
  await sub.subscribeAsync(`mqttjs/${tag}/+`, { qos: 2 })

  const { client: pub } = await connect(`mqttjs-pub-${tag}`)
  for (const qos of [0, 1, 2]) {
    await pub.publishAsync(`mqttjs/${tag}/${qos}`, `q${qos}`, { qos })
  }
  await done

  const payloads = received.map((m) => m.payload).sort()
  if (payloads.join(',') !== 'q0,q1,q2') failures.push(`payloads ${payloads}`)
  if (version === 5) {
    for (const m of received) {
      const user = (m.packet.properties || {}).userProperties || {}
      if (user.cid === undefined || user.timestamp === undefined) {
        failures.push(`missing cid/timestamp on ${m.topic}: ${JSON.stringify(user)}`)
      }
    }
  }
  await pub.endAsync()
  await sub.endAsync()
  clearTimeout(timer)
  if (failures.length > 0) {
    console.log(failures.join('; '))
    process.exit(1)
  }
  console.log('ok')
  process.exit(0)
}

main().catch((err) => {
  console.log(`error: ${err && err.message ? err.message : err}`)
  process.exit(1)
})
