// Health and safety signals in Debian's Chromium (playwright-core), run by
// tests/tests/signals.rs once its scenarios have raised their alerts: Mrs
// Qian's SpO2 trend with its limits drawn and the alert marked, over 7 and
// 30 days, and the printable page for her family doctor (printed to PDF);
// Mr Feng's "left safe zone" alert with his zone and track on the map; the
// zone editor drawing a circle and a polygon for Mrs Wu and saving them.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startTiles } from './tiles.mjs';

const env = name => {
  const value = process.env[name];
  if (!value) throw new Error(`missing env ${name}`);
  return value;
};
const SERVER = env('ANXIN_SERVER_HTTP');
const TOKEN = env('ANXIN_TOKEN');
const ZONE_ALERT = env('ANXIN_ZONE_ALERT');
const VITALS_ALERT = env('ANXIN_VITALS_ALERT');
const TILE_PORT = Number(env('ANXIN_TILE_PORT'));
const SHOTS = env('ANXIN_SCREENSHOTS');
const CHROMIUM = process.env.ANXIN_CHROMIUM || '/usr/bin/chromium';
const PATIENCE = 30_000;
const log = (...args) => console.log('[signals-test]', ...args);
function check(condition, message) { if (!condition) throw new Error(`check failed: ${message}`); }

const tiles = await startTiles(TILE_PORT);
fs.mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
});
const violations = [];
async function page(language) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 1000 }, locale: language });
  await context.addInitScript(lang => localStorage.setItem('anxin-lang', lang), language);
  const p = await context.newPage();
  p.on('pageerror', e => { log(`page error: ${e.message}`); violations.push(e.message); });
  p.on('console', m => {
    if (m.type() === 'error') log(`browser console: ${m.text()}`);
    if (m.text().includes('Content Security Policy')) violations.push(m.text());
  });
  await p.goto(`${SERVER}/#token=${TOKEN}`);
  await p.waitForSelector('#live.on', { timeout: PATIENCE });
  return p;
}
const api = async (method, url, body) => {
  const res = await fetch(`${SERVER}${url}`, {
    method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return res.json();
};

// ---- the trend ----
const en = await page('en');
await en.goto(`${SERVER}/#/residents/r-qian`);
const spo2 = '#vitals-card .chart[data-sign="spo2"][data-ready="1"]';
await en.waitForSelector(`${spo2} canvas`, { timeout: PATIENCE });
check(await en.getAttribute(spo2, 'data-limits') === '2', 'SpO2 shows its warning and critical limits');
check(Number(await en.getAttribute(spo2, 'data-alerts')) >= 1, 'the alert is marked on the SpO2 chart');
check(await en.locator('#vitals-card .chart[data-sign="heart_rate"][data-ready="1"]').count() === 1, 'heart rate has its chart');
const points = await en.locator(`${spo2} .u-legend`).count();
check(points === 1, 'the chart has its legend (min, mean, max)');
await en.locator('#vitals-card').screenshot({ path: path.join(SHOTS, 'vitals-trend-en.png') });
await en.click('#vitals-card [data-days="7"]');
await en.waitForFunction(() => document.querySelector('#vitals-card [data-days="7"]').classList.contains('active'));
await en.waitForSelector(`${spo2} canvas`, { timeout: PATIENCE });
log('trend charts with limits and the alert marked');

// ---- printable page for the family doctor ----
await en.click('#vitals-print-link');
await en.waitForSelector('#vitals-print[data-ready="1"] .chart[data-ready="1"] canvas', { timeout: PATIENCE });
const daysTable = await en.textContent('#print-days');
check(daysTable.includes('86'), `the day's minimum SpO2 in the table: ${daysTable.slice(0, 200)}`);
check(await en.locator('#print-alerts li').count() >= 1, 'the alerts are listed');
await en.emulateMedia({ media: 'print' });
check(!(await en.isVisible('#top')), 'the console chrome is not printed');
await en.screenshot({ path: path.join(SHOTS, 'vitals-print-en.png'), fullPage: true });
const pdf = await en.pdf({ format: 'A4' });
check(pdf.length > 10_000, `a PDF of the page (${pdf.length} bytes)`);
await en.emulateMedia({ media: 'screen' });
log(`printable page, ${pdf.length} bytes as PDF`);

// ---- the vitals alert shows the trend ----
await en.goto(`${SERVER}/#/alert/${VITALS_ALERT}`);
await en.waitForSelector('#detail #vitals-card .chart[data-sign="spo2"][data-ready="1"] canvas', { timeout: PATIENCE });

// ---- a left-zone alert: the zone and the track on the map ----
await en.goto(`${SERVER}/#/alert/${ZONE_ALERT}`);
await en.waitForSelector('#map[data-ready="1"][data-zones="1"] path.safe-zone', { timeout: PATIENCE });
check(await en.locator('#map path.track').count() === 1, 'the track since he left');
await en.waitForFunction(() => document.querySelectorAll('#map img.leaflet-tile-loaded').length > 0, null, { timeout: PATIENCE });
await en.locator('#position-card').screenshot({ path: path.join(SHOTS, 'zone-alert-en.png') });
log('the zone and the track on the alert map');

// ---- the zone editor ----
await en.goto(`${SERVER}/#/residents/r-wu`);
await en.waitForSelector('#zones-map[data-ready="1"]', { timeout: PATIENCE });
const map = en.locator('#zones-map');
const box = await map.boundingBox();
await en.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
check((await en.inputValue('#zone-lat')) !== '', 'a click on the map sets the centre');
await en.fill('#zone-name', 'flat');
await en.fill('#zone-hours', '21:00-06:00');
await en.fill('#zone-radius', '120');
await en.click('#zone-add');
await en.selectOption('#zone-shape', 'polygon');
await en.fill('#zone-name', 'garden');
await en.fill('#zone-hours', '');
for (const [dx, dy] of [[-80, -60], [80, -60], [80, 60], [-80, 60]]) {
  await en.mouse.click(box.x + box.width / 2 + dx, box.y + box.height / 2 + dy);
}
await en.click('#zone-add');
check(await en.locator('#zones-list li').count() === 2, 'two zones listed');
await en.waitForSelector('#zones-map path.safe-zone >> nth=1');
await en.click('#zones-save');
await en.waitForSelector('#zones-card[data-saved="2"]', { timeout: PATIENCE });
const wu = await api('GET', '/api/v1/residents/r-wu');
check(wu.safeZones?.length === 2, `stored: ${JSON.stringify(wu.safeZones)}`);
check(wu.safeZones[0].radiusM === 120 && wu.safeZones[0].hours === '21:00-06:00', 'the circle as drawn');
check(wu.safeZones[1].polygon.length === 4, 'the polygon as drawn');
check((wu.meterRules || []).length === 1, 'the other rules kept');
await en.locator('#zones-card').screenshot({ path: path.join(SHOTS, 'zone-editor-en.png') });
log('zone editor: a circle and a polygon saved');

// ---- zh-CN ----
const zh = await page('zh-CN');
await zh.goto(`${SERVER}/#/residents/r-qian`);
await zh.waitForSelector(`${spo2} canvas`, { timeout: PATIENCE });
check((await zh.textContent('#vitals-card h3')).includes('生命体征'), 'the card in Chinese');
await zh.locator('#vitals-card').screenshot({ path: path.join(SHOTS, 'vitals-trend-zh-CN.png') });

check(violations.length === 0, `no page errors or CSP violations: ${violations.join(' | ')}`);
await browser.close();
await tiles.close();
log('signals browser test passed');
