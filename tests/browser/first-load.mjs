// The console's first load as a city-wide dispatcher, in Chromium: from
// navigation until the live queue is shown and the page has settled; bytes
// transferred (encoded, headers included) by every request meanwhile.
// Used by `anxin-bench city` (BENCHMARKS.md). Prints one line of figures.
import { chromium } from 'playwright-core';

const BASE = process.env.ANXIN_BASE;
const TOKEN = process.env.ANXIN_TOKEN;
const browser = await chromium.launch({
  executablePath: process.env.ANXIN_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 820 } });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const received = new Map();
  const finished = new Map();
  const urls = new Map();
  cdp.on('Network.requestWillBeSent', e => urls.set(e.requestId, e.request.url));
  cdp.on('Network.dataReceived', e => received.set(e.requestId, (received.get(e.requestId) || 0) + e.encodedDataLength));
  cdp.on('Network.loadingFinished', e => finished.set(e.requestId, e.encodedDataLength));
  const started = Date.now();
  await page.goto(`${BASE}/#token=${TOKEN}`);
  await page.waitForSelector('#live.on', { timeout: 60000 });
  await page.waitForSelector('#queue, #view table, #view section', { timeout: 60000 });
  const shown = Date.now() - started;
  // Let the boards the queue page reads arrive, then count.
  await page.waitForTimeout(1000);
  let bytes = 0;
  for (const id of urls.keys()) bytes += Math.max(finished.get(id) || 0, received.get(id) || 0);
  const directory = [...urls.values()].filter(u => /\/api\/v1\/(residents|devices|places)(\?|$)/.test(new URL(u).pathname + new URL(u).search));
  console.log(`queue shown in ${shown} ms, ${(bytes / 1024).toFixed(0)} KB in ${urls.size} requests, directory requests: ${directory.length}`);
} finally {
  await browser.close();
}
