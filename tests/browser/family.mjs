// The family view and the alert's map in Debian's Chromium (playwright-core),
// run by tests/tests/family.rs once a family-first SOS has called the second
// contact: the dispatcher watches the alert detail, the family member opens
// the link from their SMS on a phone, sees the alarm and the map, presses
// "I'm going", and the dispatcher's page shows it. The map's tiles come from
// a local tile server in this script; with it stopped, the marker and the
// coordinates still show. A used link gets the page that says so.
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
const LINK = env('ANXIN_FAMILY_LINK');             // the link as the SMS carried it
const DISPATCHER = env('ANXIN_DISPATCHER_TOKEN');
const ALERT = env('ANXIN_ALERT_ID');
const TILE_PORT = Number(env('ANXIN_TILE_PORT'));
const SHOTS = env('ANXIN_SCREENSHOTS');
const CHROMIUM = process.env.ANXIN_CHROMIUM || '/usr/bin/chromium';
const PATIENCE = 30_000;
const log = (...args) => console.log('[family-test]', ...args);
function check(condition, message) { if (!condition) throw new Error(`check failed: ${message}`); }

const tiles = await startTiles(TILE_PORT);


fs.mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
});
const violations = [];
async function page(options, language) {
  const context = await browser.newContext({ ...options, locale: language });
  await context.addInitScript(lang => localStorage.setItem('anxin-lang', lang), language);
  const p = await context.newPage();
  p.on('pageerror', e => log(`page error: ${e.message}`));
  p.on('console', m => {
    if (m.type() === 'error') log(`browser console: ${m.text()}`);
    if (m.text().includes('Content Security Policy')) violations.push(m.text());
  });
  return p;
}
const phone = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
const desk = { viewport: { width: 1360, height: 900 } };

// The dispatcher watches the alert.
const dispatcher = await page(desk, 'en');
await dispatcher.goto(`${SERVER}/#token=${DISPATCHER}`);
await dispatcher.waitForSelector('#live.on', { timeout: PATIENCE });
await dispatcher.goto(`${SERVER}/#/alert/${ALERT}`);
await dispatcher.waitForSelector('#family-card', { timeout: PATIENCE });
await dispatcher.waitForSelector('#map[data-ready="1"] .leaflet-marker-icon', { timeout: PATIENCE });

// The family member opens the link on their phone.
const family = await page(phone, 'en');
await family.goto(LINK);
await family.waitForSelector(`.fv-alert[data-alert-id="${ALERT}"]`, { timeout: PATIENCE });
check(!family.url().includes('#'), 'the link is taken out of the address bar');
await family.waitForSelector('#map[data-ready="1"] .leaflet-marker-icon', { timeout: PATIENCE });
const coordinates = await family.textContent('[data-role=coordinates]');
check(/^31\.23040, 121\.47370$/.test(coordinates), `the coordinates: ${coordinates}`);
await family.waitForFunction(() => document.querySelectorAll('#map img.leaflet-tile-loaded').length > 0, null, { timeout: PATIENCE });
check(tiles.served() > 0, 'tiles came from the local tile server');
const body = await family.textContent('body');
check(!body.includes('diabetic') && !body.includes('4321'), 'no medical or access notes in the family view');
await family.screenshot({ path: path.join(SHOTS, 'family-en.png'), fullPage: true });

// "I'm going": the dispatcher's page shows it.
const pressed = Date.now();
await family.click('button[data-answer=going]');
await dispatcher.waitForSelector('#family-card li[data-kind=going]', { timeout: PATIENCE });
const shownAfter = Date.now() - pressed;
log(`"I'm going" on the dispatcher's alert detail ${shownAfter} ms after the press`);
console.log(`FAMILY_ANSWER_SHOWN_MS ${shownAfter}`);
await dispatcher.waitForSelector('[data-role=family-taken]', { timeout: PATIENCE });
await family.waitForFunction(() => document.querySelector('[data-role=coming]')?.textContent.includes('Li Ming'), null, { timeout: PATIENCE });
await dispatcher.screenshot({ path: path.join(SHOTS, 'alert-family-map-en.png'), fullPage: true });
await family.click('#fv-lang');
await family.waitForFunction(() => document.documentElement.lang === 'zh-CN', null, { timeout: PATIENCE });
await family.waitForSelector('#map[data-ready="1"] .leaflet-marker-icon', { timeout: PATIENCE });
await family.evaluate(() => { document.querySelector('#toast').style.display = 'none'; });
await family.screenshot({ path: path.join(SHOTS, 'family-zh-CN.png'), fullPage: true });

// The same in Chinese, from the same session (the view follows the
// contact's language; the dispatcher's console its own).
const dispatcherZh = await page(desk, 'zh-CN');
await dispatcherZh.goto(`${SERVER}/#token=${DISPATCHER}`);
await dispatcherZh.waitForSelector('#live.on', { timeout: PATIENCE });
await dispatcherZh.goto(`${SERVER}/#/alert/${ALERT}`);
await dispatcherZh.waitForSelector('#map[data-ready="1"] .leaflet-marker-icon', { timeout: PATIENCE });
await dispatcherZh.waitForFunction(() => document.querySelectorAll('#map img.leaflet-tile-loaded').length > 0, null, { timeout: PATIENCE });
await dispatcherZh.screenshot({ path: path.join(SHOTS, 'alert-family-map-zh-CN.png'), fullPage: true });

// The link again: used, so the page says so and shows nothing of the alarm.
const again = await page(phone, 'zh-CN');
await again.goto(LINK);
await again.waitForSelector('#bad-link', { timeout: PATIENCE });
check(!(await again.textContent('body')).includes('Wang Xiulan'), 'a used link shows nothing of the resident');
await again.screenshot({ path: path.join(SHOTS, 'family-link-used-zh-CN.png') });

// Without tiles: the marker, the accuracy circle and the coordinates.
await tiles.close();
const dark = await page(desk, 'en');
await dark.goto(`${SERVER}/#token=${DISPATCHER}`);
await dark.waitForSelector('#live.on', { timeout: PATIENCE });
await dark.goto(`${SERVER}/#/alert/${ALERT}`);
await dark.waitForSelector('#map[data-ready="1"] .leaflet-marker-icon', { timeout: PATIENCE });
check((await dark.textContent('[data-role=coordinates]')).startsWith('31.23040'), 'coordinates without tiles');
check(await dark.$('#map path.accuracy'), 'the accuracy circle without tiles');
check((await dark.getAttribute('[data-role=open-in-maps]', 'href')).startsWith('geo:31.2304'), 'an open-in-maps link');
await dark.locator('#position-card').screenshot({ path: path.join(SHOTS, 'map-no-tiles-en.png') });

check(violations.length === 0, `no Content-Security-Policy violations: ${violations.join('; ')}`);
await browser.close();
log('family browser test passed');
