// One device, two MQTT.js connections (distinct client ids), as an
// integrator's app and a test console would hold them: both subscribe to
// the device's acks, each publishes; each must hear every `stored` ack, and
// then "help is coming" when a dispatcher acknowledges the alert. Run by
// tests/tests/device_connections.rs; prints `passed`.
import mqtt from 'mqtt';

const port = Number(process.env.ANXIN_MQTT_PORT);
const device = process.env.ANXIN_DEVICE;
const password = process.env.ANXIN_PASSWORD;
const ackTopic = `anxin/v1/dev/${device}/ack/json`;
const eventTopic = `anxin/v1/dev/${device}/event/json`;
const PATIENCE_MS = 30_000;

function connect(clientId) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
      clientId, username: device, password, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000,
    });
    const heard = [];
    const waiters = [];
    client.on('message', (topic, payload) => {
      const ack = JSON.parse(payload.toString());
      heard.push(ack);
      for (const w of [...waiters]) if (w.match(ack)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(ack); }
    });
    client.once('connect', () => client.subscribe(ackTopic, { qos: 1 }, (err) => err ? reject(err) : resolve({
      client,
      clientId,
      waitFor(what, match) {
        const found = heard.find(match);
        if (found) return Promise.resolve(found);
        return new Promise((res, rej) => {
          const timer = setTimeout(() => rej(new Error(`${clientId} never heard ${what}`)), PATIENCE_MS);
          waiters.push({ match, resolve: (a) => { clearTimeout(timer); res(a); } });
        });
      },
    })));
    client.once('error', reject);
    client.once('close', () => console.log(`${clientId}: closed`));
  });
}

const stored = (seq) => (a) => a.kind === 'ACK_KIND_STORED' && String(a.seq) === String(seq);
const publish = (c, body) => new Promise((res, rej) =>
  c.client.publish(eventTopic, JSON.stringify(body), { qos: 1 }, (err) => err ? rej(err) : res()));

const app = await connect(`${device}-app`);
const console_ = await connect(`${device}-console`);
console.log('both connected and subscribed');
await publish(app, { seq: 1, kind: 'EVENT_KIND_SOS', batteryPct: 80 });
for (const c of [app, console_]) await c.waitFor('stored 1', stored(1));
console.log('stored 1 heard on both connections');
await publish(console_, { seq: 2, kind: 'EVENT_KIND_TELEMETRY', batteryPct: 80 });
for (const c of [app, console_]) await c.waitFor('stored 2', stored(2));
console.log('stored 2 heard on both connections');
// The test acknowledges the alert now.
console.log('waiting for help is coming');
for (const c of [app, console_]) {
  const a = await c.waitFor('help is coming', (a) => a.kind === 'ACK_KIND_ACKNOWLEDGED');
  console.log(`${c.clientId}: ${a.message}`);
}
for (const c of [app, console_]) c.client.end();
console.log('passed');
