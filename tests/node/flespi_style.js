// MQTT.js used the way flespi's web tools use it (flespi-io-js, MQTT Board;
// docs/flespi.md#what-the-real-clients-rely-on), against one tern HTTP port that serves both REST
// and MQTT over WebSocket:
//  - v5 over ws:// without a path, `FlespiToken <key>` as the user name, subprotocol `mqtt`;
//  - deliveries routed by Subscription Identifier only (flespi-io-js drops the rest);
//  - a resumed session's CONNACK lists its subscriptions (MQTT Board restores its panels);
//  - REST over HTTP on the same port, and REST over MQTT (`flespi/rest/get/auth/info`) answered
//    on the Response Topic with the Correlation Data echoed and `http_code`.
//
// Usage: node flespi_style.js PORT TOKEN
// Prints "ok" and exits 0 when every check passed; prints what failed and exits 1 otherwise.
'use strict'

const mqtt = require('mqtt')

const [portArg, token] = process.argv.slice(2)
const port = Number(portArg)
if (!port || !token) {
  console.error('usage: node flespi_style.js PORT TOKEN')
  process.exit(2)
}
const run = Math.random().toString(16).slice(2, 10)
const failures = []
function check (ok, what) { if (!ok) failures.push(what) }

const timer = setTimeout(() => {
  console.log(`timed out; ${failures.join('; ')}`)
  process.exit(1)
}, 20000)

function connect (clientId, extra) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(`ws://127.0.0.1:${port}`, Object.assign({
      clientId,
      username: `FlespiToken ${token}`,
      protocolVersion: 5,
      keepalive: 420,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      resubscribe: false
    }, extra))
    client.once('connect', (connack) => resolve({ client, connack }))
    client.once('error', reject)
  })
}

function userProps (packet) {
  return ((packet && packet.properties) || {}).userProperties || {}
}

// Resolves with the first message that `accept` takes, or rejects after `ms`.
function nextMessage (client, accept, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { client.removeListener('message', on); reject(new Error('no message')) }, ms)
    function on (topic, payload, packet) {
      if (!accept(topic, packet)) return
      clearTimeout(t)
      client.removeListener('message', on)
      resolve({ topic, payload, packet })
    }
    client.on('message', on)
  })
}

async function subscriptionIdentifiers () {
  const { client: sub, connack } = await connect(`flespi-io-js_${run}`)
  const up = userProps(connack)
  check(typeof up.token === 'string' && JSON.parse(up.token).cid !== undefined, `CONNACK token property: ${JSON.stringify(up)}`)
  const seen = []
  sub.on('message', (topic, payload, packet) => {
    seen.push({ topic, ids: (packet.properties || {}).subscriptionIdentifier })
  })
  await sub.subscribeAsync(`fio/${run}/a/+`, { qos: 1, properties: { subscriptionIdentifier: 7 } })
  await sub.subscribeAsync(`fio/${run}/b/#`, { qos: 1, properties: { subscriptionIdentifier: 9 } })
  const { client: pub } = await connect(`fio-pub-${run}`)
  await pub.publishAsync(`fio/${run}/a/x`, 'to 7', { qos: 1 })
  await pub.publishAsync(`fio/${run}/b/x/y`, 'to 9', { qos: 1 })
  const deadline = Date.now() + 5000
  while (seen.length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  const byTopic = Object.fromEntries(seen.map((s) => [s.topic, JSON.stringify(s.ids)]))
  check(seen.length === 2, `two deliveries, got ${JSON.stringify(seen)}`)
  check(byTopic[`fio/${run}/a/x`] === '7' || byTopic[`fio/${run}/a/x`] === '[7]', `identifier 7: ${JSON.stringify(byTopic)}`)
  check(byTopic[`fio/${run}/b/x/y`] === '9' || byTopic[`fio/${run}/b/x/y`] === '[9]', `identifier 9: ${JSON.stringify(byTopic)}`)
  await sub.endAsync()
  await pub.endAsync()
}

async function resumedSessionListsSubscriptions () {
  const id = `mqtt-board-${run}`
  const opts = { clean: false, properties: { sessionExpiryInterval: 60 } }
  const first = await connect(id, opts)
  check(userProps(first.connack).subscriptions === '[]', `fresh session subscriptions: ${JSON.stringify(userProps(first.connack))}`)
  await first.client.subscribeAsync(`board/${run}/#`, { qos: 1, properties: { subscriptionIdentifier: 3 } })
  await first.client.endAsync()
  const again = await connect(id, opts)
  check(again.connack.sessionPresent === true, 'session present on reconnect')
  let subs = []
  try { subs = JSON.parse(userProps(again.connack).subscriptions) } catch (e) { }
  check(subs.length === 1 && subs[0].topic === `board/${run}/#` && subs[0].qos === 1 && subs[0].subscription_id === 3,
    `CONNACK subscriptions of the resumed session: ${JSON.stringify(userProps(again.connack))}`)
  // Leave nothing behind: a clean start ends the session.
  await again.client.endAsync()
  const clean = await connect(id, { clean: true })
  await clean.client.endAsync()
}

async function restOnTheSamePort () {
  const res = await fetch(`http://127.0.0.1:${port}/auth/info`, { headers: { Authorization: `FlespiToken ${token}` } })
  check(res.status === 200, `GET /auth/info over HTTP: ${res.status}`)
  const body = await res.json()
  check(Array.isArray(body.result) && body.result.length === 1, `HTTP envelope: ${JSON.stringify(body)}`)

  const { client } = await connect(`fio-rest-${run}`)
  const responseTopic = `rest-answers/${run}`
  await client.subscribeAsync(responseTopic, { qos: 1 })
  const answer = nextMessage(client, (topic) => topic === responseTopic)
  await client.publishAsync('flespi/rest/get/auth/info', '', {
    qos: 1,
    properties: { responseTopic, correlationData: Buffer.from(`corr-${run}`) }
  })
  const { payload, packet } = await answer
  const props = packet.properties || {}
  check(props.correlationData && props.correlationData.toString() === `corr-${run}`, `correlation data echoed: ${JSON.stringify(props)}`)
  check(String(userProps(packet).http_code) === '200', `http_code: ${JSON.stringify(userProps(packet))}`)
  const over = JSON.parse(payload.toString())
  // `accessed` is the time of the token's last use, so it moves when the two calls straddle a second.
  const stable = (result) => JSON.stringify((result || []).map(({ accessed, ...rest }) => rest))
  check(stable(over.result) === stable(body.result), `REST over MQTT answers like HTTP: ${payload}`)
  await client.endAsync()
}

async function main () {
  await subscriptionIdentifiers()
  await resumedSessionListsSubscriptions()
  await restOnTheSamePort()
  clearTimeout(timer)
  if (failures.length) {
    console.log(failures.join('\n'))
    process.exit(1)
  }
  console.log('ok')
  process.exit(0)
}

main().catch((e) => {
  console.log(`error: ${e.stack || e}; ${failures.join('; ')}`)
  process.exit(1)
})
