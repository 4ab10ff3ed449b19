// Drives the Anxin console in Debian's Chromium with playwright-core.
// Run by tests/tests/console_browser.rs, which starts a real server and
// gateway, seeds the directory and passes what this script needs in env.
// The browser reaches the server through a TCP proxy in this script, so the
// test can kill the live SSE connection and check the queue catches up.
import { spawn } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = name => {
  const value = process.env[name];
  if (!value) throw new Error(`missing env ${name}`);
  return value;
};
const SERVER = env('ANXIN_SERVER_HTTP');          // http://127.0.0.1:port
const SIM = env('ANXIN_SIM');
const MQTT = env('ANXIN_MQTT');
const DISPATCHER = env('ANXIN_DISPATCHER_TOKEN');
const CARER = env('ANXIN_CARER_TOKEN');           // carer-a, community A
const OTHER = env('ANXIN_OTHER_CARER_TOKEN');     // carer-b, community B
const SHOTS = env('ANXIN_SCREENSHOTS');
const WORKDIR = env('ANXIN_WORKDIR');
const CHROMIUM = process.env.ANXIN_CHROMIUM || '/usr/bin/chromium';
const PATIENCE = 60_000;

const log = (...args) => console.log('[console-test]', ...args);
function check(condition, message) { if (!condition) throw new Error(`check failed: ${message}`); }

// ---- a proxy that can cut every connection and refuse new ones ----
const serverUrl = new URL(SERVER);
const sockets = new Set();
let refusing = false;
const proxy = net.createServer(client => {
  if (refusing) { client.destroy(); return; }
  const upstream = net.connect(Number(serverUrl.port), serverUrl.hostname);
  for (const s of [client, upstream]) { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); }
  client.pipe(upstream).pipe(client);
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
});
await new Promise(resolve => proxy.listen(0, '127.0.0.1', resolve));
const BASE = `http://127.0.0.1:${proxy.address().port}`;
const cut = () => { refusing = true; for (const s of sockets) s.destroy(); };
const restore = () => { refusing = false; };

// ---- the simulator ----
function press(device) {
  const child = spawn(SIM, ['--gateway', MQTT, 'press', '--device', device], { cwd: WORKDIR });
  const lines = [];
  const waiters = [];
  let buffer = '';
  child.stdout.on('data', chunk => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      lines.push(line);
      log(`sim ${device}: ${line}`);
      for (const w of [...waiters]) if (line.startsWith(w.prefix)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(line); }
    }
  });
  child.stderr.on('data', () => {});
  return {
    child,
    line(prefix) {
      const seen = lines.find(l => l.startsWith(prefix));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        waiters.push({ prefix, resolve });
        setTimeout(() => reject(new Error(`sim ${device}: no line "${prefix}" in ${PATIENCE} ms`)), PATIENCE);
      });
    },
  };
}

async function serverAlerts() {
  const res = await fetch(`${SERVER}/api/v1/alerts?state=new,offered,acknowledged,en_route,on_scene`, {
    headers: { authorization: `Bearer ${DISPATCHER}` },
  });
  return (await res.json()).alerts;
}
async function until(what, fn) {
  const deadline = Date.now() + PATIENCE;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 200));
  }
}

fs.mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
});
const pages = [];
const policyViolations = [];
async function signIn(token, { mobile = false, language = 'en' } = {}) {
  const context = await browser.newContext(mobile
    ? { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: language }
    : { viewport: { width: 1360, height: 820 }, locale: language });
  const page = await context.newPage();
  page.on('console', m => {
    if (m.type() !== 'error') return;
    log(`browser console: ${m.text()}`);
    // The server's Content-Security-Policy must not be what breaks a page.
    if (m.text().includes('Content Security Policy')) policyViolations.push(m.text());
  });
  await page.goto(`${BASE}/#token=${token}`);
  await page.waitForSelector('#live.on', { timeout: PATIENCE });
  pages.push(page);
  return page;
}
const shot = async (page, name) => {
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
  log(`screenshot ${name}.png`);
};
const setLanguage = async (page, wanted) => {
  if (await page.evaluate(() => document.documentElement.lang) !== wanted) await page.keyboard.press('l');
  await page.waitForFunction(w => document.documentElement.lang === w, wanted);
};

let failed = false;
try {
  // 1. The dispatcher signs in; the queue is empty and live.
  const desk = await signIn(DISPATCHER);
  await desk.waitForSelector('#queue-empty');
  const loads = await desk.evaluate(() => performance.getEntriesByType('navigation').length);

  // 2. A resident presses; the alert appears without a reload, with a cue.
  const first = press('btn-1');
  await first.line('stored');
  const row = await desk.waitForSelector('tr.alert-row[data-alert-id]', { timeout: PATIENCE });
  const alertId = await row.getAttribute('data-alert-id');
  check(await desk.evaluate(() => performance.getEntriesByType('navigation').length) === loads, 'no reload');
  check(await desk.evaluate(() => window.anxin.chimes) === 1, 'one audible cue for the new P0');
  check((await row.getAttribute('class')).includes('P0'), 'the row is coloured P0');
  log(`alert ${alertId} shown`);

  // 3. A carer of another community does not see it.
  const other = await signIn(OTHER, { mobile: true });
  await other.goto(`${BASE}/#/queue`);
  await other.waitForSelector('#queue-empty', { timeout: PATIENCE });
  check(await other.locator(`[data-alert-id="${alertId}"]`).count() === 0, 'carer-b sees nothing of the alert');
  await other.goto(`${BASE}/#/carer`);
  check(await other.locator(`[data-alert-id="${alertId}"]`).count() === 0, 'carer-b has no offer');

  // 4. The offered carer's phone shows the offer.
  const phone = await signIn(CARER, { mobile: true });
  await phone.waitForSelector(`#carer [data-alert-id="${alertId}"] button[data-action="ack"]`, { timeout: PATIENCE });
  await shot(phone, 'phone-en');
  await setLanguage(phone, 'zh-CN');
  await shot(phone, 'phone-zh-CN');
  await setLanguage(phone, 'en');

  // 5. Screenshots of the queue, then the detail view with the resident card.
  await shot(desk, 'queue-en');
  await setLanguage(desk, 'zh-CN');
  await shot(desk, 'queue-zh-CN');
  await desk.click(`tr.alert-row[data-alert-id="${alertId}"]`);
  await desk.waitForSelector('#medical-notes');
  await shot(desk, 'detail-zh-CN');
  await setLanguage(desk, 'en');
  await desk.waitForSelector('#medical-notes');
  await shot(desk, 'detail-en');

  // 6. The dispatcher acknowledges; the device hears "help is coming".
  await desk.click('#detail button[data-action="ack"]');
  await desk.waitForFunction(() => document.querySelector('#detail .state')?.textContent === 'acknowledged');
  const heard = await first.line('acknowledged');
  check(heard.includes('help is coming') && heard.includes(`alert=${alertId}`), `device heard: ${heard}`);

  // The carer, now holding it, sets off from the phone.
  await phone.waitForSelector(`#carer [data-alert-id="${alertId}"] button[data-action="en_route"]`, { timeout: PATIENCE });
  await phone.click(`#carer [data-alert-id="${alertId}"] button[data-action="en_route"]`);
  await until('en route at the server', async () =>
    (await serverAlerts()).find(a => a.id === alertId && a.state === 'ALERT_STATE_EN_ROUTE'));

  // 7. The SSE connection dies; two alerts are raised while it is down; the
  // queue recovers with every alert exactly once.
  await desk.goto(`${BASE}/#/queue`);
  cut();
  await desk.waitForSelector('#live:not(.on)', { timeout: PATIENCE });
  const during = [press('btn-2'), press('btn-3')];
  await Promise.all(during.map(p => p.line('stored')));
  const expected = await until('three open alerts at the server', async () => {
    const open = await serverAlerts();
    return open.length === 3 && open;
  });
  restore();
  await desk.waitForSelector('#live.on', { timeout: PATIENCE });
  await desk.waitForFunction(n => document.querySelectorAll('tr.alert-row').length === n, expected.length, { timeout: PATIENCE });
  const shown = await desk.$$eval('tr.alert-row', rows => rows.map(r => r.dataset.alertId));
  check(new Set(shown).size === shown.length, `no alert shown twice: ${shown}`);
  check(JSON.stringify([...shown].sort()) === JSON.stringify(expected.map(a => a.id).sort()), `queue ${shown} = server ${expected.map(a => a.id)}`);
  check(await desk.evaluate(() => window.anxin.chimes) === 3, 'the two P0s raised during the outage were cued');
  // Sorted by priority then age: the oldest P0 first.
  check(shown[0] === alertId, `oldest first: ${shown}`);

  // 8. Keyboard: `j` selects the next alert, `a` acknowledges it.
  await desk.keyboard.press('j');
  const second = await desk.$eval('tr.selected', r => r.dataset.alertId);
  await desk.keyboard.press('a');
  const taken = await until('keyboard acknowledgement at the server', async () =>
    (await serverAlerts()).find(a => a.id === second && a.state === 'ALERT_STATE_ACKNOWLEDGED'));
  const device = during[['btn-2', 'btn-3'].indexOf(taken.deviceId)];
  check(device, `acknowledged alert ${second} is one of the outage's: ${taken.deviceId}`);
  check((await device.line('acknowledged')).includes('help is coming'), 'its device heard it');
  for (const p of [first, ...during]) p.child.kill();

  // 9. The staff board and the reports page render from the server's figures.
  await desk.goto(`${BASE}/#/staff`);
  const status = await desk.waitForSelector('#staff-board tr[data-staff-id="carer-li"] .status', { timeout: PATIENCE });
  check(await status.textContent() === 'busy', 'carer-li holds alerts: busy');
  await desk.goto(`${BASE}/#/reports`);
  const count = await desk.waitForSelector('#report-alerts', { timeout: PATIENCE });
  check(await count.textContent() === '3', `report counts the three alerts: ${await count.textContent()}`);
  check(await desk.locator('#report svg rect').count() > 0, 'the report has a chart');
  await shot(desk, 'reports-en');

  // 10. The gateway board puts a gateway in trouble first, says why, and the
  // nav shows a badge from every page.
  await desk.goto(`${BASE}/#/gateways`);
  const trouble = await desk.waitForSelector('#gateway-board tr[data-gateway-id="gw-home-7"].gw-degraded .reasons', { timeout: PATIENCE });
  check((await trouble.textContent()).includes('disk low'), `the reason is shown: ${await trouble.textContent()}`);
  check(await desk.locator('#gateway-board tbody tr').first().getAttribute('data-gateway-id') === 'gw-home-7', 'trouble first');
  check(await desk.locator('#gateway-board tr[data-gateway-id="gw-test"].gw-ok').count() === 1, 'the healthy gateway reads ok');
  check(await desk.locator('#gateway-trouble').textContent() === '1', 'the nav badge counts it');
  await shot(desk, 'gateways-en');
  check(policyViolations.length === 0, `no Content-Security-Policy violations: ${policyViolations.join(' | ')}`);
  log('console browser test passed');
} catch (err) {
  failed = true;
  console.error('[console-test] FAILED:', err);
  for (const [i, page] of pages.entries()) {
    await page.screenshot({ path: path.join(WORKDIR, `failure-${i}.png`) }).catch(() => {});
  }
  log(`failure screenshots in ${WORKDIR}`);
} finally {
  await browser.close();
  proxy.close();
  process.exit(failed ? 1 : 0);
}
