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
const ADMIN = env('ANXIN_ADMIN_TOKEN');
const UTC_OFFSET_MIN = Number(env('ANXIN_UTC_OFFSET'));  // the server's routing.utc_offset_minutes
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
async function adminCall(method, apiPath, body) {
  const res = await fetch(`${SERVER}${apiPath}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${apiPath}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}
// "HH:MM:SS" in the server's local time, `ms` from now.
const localClock = ms => new Date(Date.now() + ms + UTC_OFFSET_MIN * 60000).toISOString().slice(11, 19);
// 1 = Monday … 7 = Sunday, today in the server's local time.
const localWeekday = () => ((new Date(Date.now() + UTC_OFFSET_MIN * 60000).getUTCDay() + 6) % 7) + 1;
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
// Every API request the pages make: the queue must never need a whole
// collection of the directory (a city has a million residents).
const requests = [];
const wholeCollection = /\/api\/v1\/(residents|devices|places)(\?|$)/;
async function signIn(token, { mobile = false, language = 'en' } = {}) {
  const context = await browser.newContext(mobile
    ? { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: language }
    : { viewport: { width: 1360, height: 820 }, locale: language });
  const page = await context.newPage();
  page.on('request', r => requests.push(new URL(r.url()).pathname + new URL(r.url()).search));
  page.on('pageerror', e => log(`page error: ${e.message}`));
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
  check((await row.textContent()).includes('王秀英 Wang Xiuying'), `the row names the resident: ${await row.textContent()}`);
  check((await row.textContent()).includes('和平社区 Heping'), 'and her community');
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

  // 11. Living alone: today's check-ins and visits. Wang and Li called
  // earlier today (a sign of life); Sun has until later; Zhou's window
  // closes in a few seconds with no sign, so a missed check-in is raised.
  const resident = async (id, name, start, end) => {
    const record = await adminCall('GET', `/api/v1/residents/${id}`).catch(() => null);
    await adminCall('PUT', `/api/v1/residents/${id}`, {
      ...(record || { communityId: 'c-a', address: '新华里 7 号 3 单元 Xinhua Li 7-3' }),
      name, checkin: { start, end },
    });
  };
  const [opened, later, soon] = [localClock(-60_000), localClock(180_000), localClock(5_000)];
  await resident('r-1', '王秀英 Wang Xiuying', opened, later);
  await resident('r-2', '李建国 Li Jianguo', opened, later);
  await resident('r-4', '孙德明 Sun Deming', opened, later);
  await resident('r-5', '周桂兰 Zhou Guilan', opened, soon);
  const today = localWeekday();
  for (const [plan, who, note] of [['v-1', 'r-1', 'weekly welfare visit 每周巡访'], ['v-2', 'r-4', 'bring medicine 送药']]) {
    await adminCall('PUT', `/api/v1/visit-plans/${plan}`, { residentId: who, weekdays: [today], carerId: 'carer-li', note, active: true });
  }
  // The carer records arriving at Wang's from the phone, with a note.
  await phone.goto(`${BASE}/#/carer`);
  const visitButton = await phone.waitForSelector('#carer-visits [data-plan-id="v-1"] button[data-action="arrive"]', { timeout: PATIENCE });
  await phone.fill('#carer-visits [data-plan-id="v-1"] textarea', 'All well; fridge stocked 一切安好');
  await shot(phone, 'visits-phone-en');
  await visitButton.click();
  await phone.waitForSelector('#carer-visits [data-plan-id="v-1"].visit-done', { timeout: PATIENCE });
  const visitsNow = await adminCall('GET', '/api/v1/visits');
  const wang = visitsNow.visits.find(v => v.planId === 'v-1');
  check(wang.status === 'done' && wang.visitedBy === 'carer-li' && wang.note.includes('fridge'), `the visit is recorded: ${JSON.stringify(wang)}`);
  await setLanguage(phone, 'zh-CN');
  await shot(phone, 'visits-phone-zh-CN');
  await setLanguage(phone, 'en');

  // The dispatcher's view: who is fine, who is pending, who missed.
  const missed = await until('the missed check-in alert', async () =>
    (await serverAlerts()).find(a => a.kind === 'EVENT_KIND_CHECKIN_MISSED' && a.residentId === 'r-5'));
  await desk.goto(`${BASE}/#/welfare`);
  await desk.waitForSelector(`#checkins tr[data-resident-id="r-5"].checkin-missed a[href="#/alert/${missed.id}"]`, { timeout: PATIENCE });
  for (const [id, status] of [['r-1', 'ok'], ['r-2', 'ok'], ['r-4', 'pending']]) {
    check(await desk.locator(`#checkins tr[data-resident-id="${id}"].checkin-${status}`).count() === 1, `${id} is ${status}`);
  }
  check((await desk.textContent('#checkin-summary')).includes('1 missed'), 'the summary counts the missed one');
  check(await desk.locator('#visits tr[data-plan-id="v-1"].visit-done').count() === 1, 'Wang\'s visit done');
  check(await desk.locator('#visits tr[data-plan-id="v-2"].visit-due').count() === 1, 'Sun\'s visit still due');
  check(await desk.locator('#visit-plans tr[data-plan-id]').count() === 2, 'both plans listed');
  await shot(desk, 'welfare-en');
  await setLanguage(desk, 'zh-CN');
  await desk.waitForSelector('#checkins tr[data-resident-id="r-5"].checkin-missed');
  await shot(desk, 'welfare-zh-CN');
  await setLanguage(desk, 'en');
  // The alert's detail shows the resident's recent days.
  await desk.goto(`${BASE}/#/alert/${missed.id}`);
  await desk.waitForSelector('#welfare-card #recent-checkins', { timeout: PATIENCE });
  check((await desk.textContent('#welfare-card #recent-checkins')).includes('missed'), 'the missed day is listed');
  check((await desk.textContent('#last-sign')).includes('no sign of life'), 'no sign of life recorded for Zhou');
  await shot(desk, 'checkin-detail-en');
  // A dispatcher confirms Sun is well from the check-in list.
  await desk.goto(`${BASE}/#/welfare`);
  await desk.click('#checkins tr[data-resident-id="r-4"] button[data-action="confirm-well"]');
  await desk.waitForSelector('#checkins tr[data-resident-id="r-4"].checkin-ok', { timeout: PATIENCE });

  // Queue, detail, phone, welfare: names came with the alerts and lists;
  // only the reports page lists places (once).
  const directory = requests.filter(r => wholeCollection.test(r) && !r.startsWith('/api/v1/places'));
  check(directory.length === 0, `no directory list was requested before the directory view: ${directory.join(', ')}`);
  check(requests.filter(r => r.startsWith('/api/v1/places')).length <= pages.length, 'places read at most once per page');

  // 12. The resident directory: searched and paged on the server, a
  // resident opened (and the read audited once).
  const csv = ['id,name,community_id,address,phone,medical_notes,emergency_contacts,access_notes']
    .concat(Array.from({ length: 60 }, (_, i) => `p-${String(i).padStart(3, '0')},测试 Test ${i},c-a,和平里 ${i} 号,139 0000 ${String(i).padStart(4, '0')},,,`))
    .join('\n');
  const imported = await fetch(`${SERVER}/api/v1/import/residents`, {
    method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'text/csv' }, body: csv,
  });
  check(imported.ok, `60 residents imported: ${imported.status}`);
  const before = requests.length;
  await desk.waitForFunction(() => getComputedStyle(document.querySelector('#toast')).display === 'none', null, { timeout: PATIENCE });
  await desk.goto(`${BASE}/#/residents`);
  // In community then id order: the 60 imported (p-…) before r-1…r-5.
  await desk.waitForSelector('#resident-list tr[data-resident-id="p-000"]', { timeout: PATIENCE });
  check(await desk.locator('#resident-list tbody tr').count() === 50, 'the first page holds 50 residents');
  await desk.fill('#resident-search', '王');
  await desk.press('#resident-search', 'Enter');
  await desk.waitForFunction(() => document.querySelectorAll('#resident-list tbody tr').length === 1, null, { timeout: PATIENCE });
  check(await desk.locator('#resident-list tr[data-resident-id="r-1"]').count() === 1, 'a name search finds Wang');
  await shot(desk, 'directory-search-en');
  await desk.fill('#resident-search', '139 0000');
  await desk.press('#resident-search', 'Enter');
  await desk.waitForSelector('#resident-list tr[data-resident-id="p-000"]', { timeout: PATIENCE });
  check(await desk.locator('#resident-list tbody tr').count() === 50, 'a phone search fills a page');
  await desk.click('#page-next');
  await desk.waitForSelector('#resident-list tr[data-resident-id="p-059"]', { timeout: PATIENCE });
  check(await desk.locator('#resident-list tbody tr').count() === 10, 'the second page holds the other 10');
  check(await desk.locator('#page-next').count() === 0, 'no page after the last');
  await desk.click('#page-prev');
  await desk.waitForSelector('#resident-list tr[data-resident-id="p-000"]', { timeout: PATIENCE });
  await setLanguage(desk, 'zh-CN');
  await shot(desk, 'directory-zh-CN');
  await setLanguage(desk, 'en');
  const reads = async () => (await adminCall('GET', '/api/v1/audit?action=resident.read&target=resident/r-1')).entries.length;
  const readsBefore = await reads();
  await desk.goto(`${BASE}/#/residents/r-1`);
  await desk.waitForSelector('#resident-page #resident-name', { timeout: PATIENCE });
  await desk.waitForSelector('#resident-devices h4', { timeout: PATIENCE });
  check((await desk.textContent('#resident-devices')).includes('btn-1'), 'the resident\'s device is listed');
  await desk.waitForSelector('#resident-page #recent-alerts', { timeout: PATIENCE });
  await shot(desk, 'resident-en');
  // A live update re-renders the page without reading the record again.
  await desk.evaluate(() => window.dispatchEvent(new HashChangeEvent('hashchange')));
  await desk.waitForTimeout(500);
  check(await reads() === readsBefore + 1, `opening the resident was audited once: ${readsBefore} -> ${await reads()}`);
  const paged = requests.slice(before).filter(r => wholeCollection.test(r));
  check(paged.length > 0 && paged.every(r => /[?&]limit=\d+/.test(r) && (!r.startsWith('/api/v1/devices') || r.includes('resident='))),
    `the directory view asks for pages only: ${paged.join(', ')}`);

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
