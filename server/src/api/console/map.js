// Where the resident is: a map (Leaflet, bundled) with the marker, the fix's
// accuracy circle and the track since the alert was raised, and beside it
// always the coordinates, their age and an "open in maps" link — which is
// all that shows when no tiles are configured or reachable. Shared by the
// dispatchers' alert detail and the family view.

let settings = null;
async function mapSettings() {
  if (!settings) {
    settings = fetch('/console/map.json').then(r => r.json()).catch(() => ({ tileUrl: '', datum: 'wgs84' }));
  }
  return settings;
}

let leaflet = null;
function loadLeaflet() {
  if (!leaflet) {
    leaflet = new Promise((resolve, reject) => {
      const css = document.createElement('link');
      css.rel = 'stylesheet';
      css.href = '/console/leaflet.css';
      document.head.append(css);
      const script = document.createElement('script');
      script.src = '/console/leaflet.js';
      script.onload = () => resolve(window.L);
      script.onerror = reject;
      document.head.append(script);
    });
  }
  return leaflet;
}

// WGS-84 → GCJ-02, the datum of mainland China's AMap and Tencent tiles
// (the published conversion; outside China the two are the same).
const A = 6378245.0;
const EE = 0.00669342162296594323;
function outsideChina(lat, lon) { return lon < 72.004 || lon > 137.8347 || lat < 0.8293 || lat > 55.8271; }
function tLat(x, y) {
  let r = -100 + 2 * x + 3 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * Math.sqrt(Math.abs(x));
  r += (20 * Math.sin(6 * x * Math.PI) + 20 * Math.sin(2 * x * Math.PI)) * 2 / 3;
  r += (20 * Math.sin(y * Math.PI) + 40 * Math.sin(y / 3 * Math.PI)) * 2 / 3;
  r += (160 * Math.sin(y / 12 * Math.PI) + 320 * Math.sin(y * Math.PI / 30)) * 2 / 3;
  return r;
}
function tLon(x, y) {
  let r = 300 + x + 2 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * Math.sqrt(Math.abs(x));
  r += (20 * Math.sin(6 * x * Math.PI) + 20 * Math.sin(2 * x * Math.PI)) * 2 / 3;
  r += (20 * Math.sin(x * Math.PI) + 40 * Math.sin(x / 3 * Math.PI)) * 2 / 3;
  r += (150 * Math.sin(x / 12 * Math.PI) + 300 * Math.sin(x / 30 * Math.PI)) * 2 / 3;
  return r;
}
export function toGcj02(lat, lon) {
  if (outsideChina(lat, lon)) return [lat, lon];
  let dLat = tLat(lon - 105, lat - 35);
  let dLon = tLon(lon - 105, lat - 35);
  const rad = lat / 180 * Math.PI;
  let magic = Math.sin(rad);
  magic = 1 - EE * magic * magic;
  const sq = Math.sqrt(magic);
  dLat = (dLat * 180) / ((A * (1 - EE)) / (magic * sq) * Math.PI);
  dLon = (dLon * 180) / (A / sq * Math.cos(rad) * Math.PI);
  return [lat + dLat, lon + dLon];
}

export const degrees = p => [Number(p.location?.latE7 || 0) / 1e7, Number(p.location?.lonE7 || 0) / 1e7];

// The text part: coordinates (WGS-84), accuracy, room, age, and a geo: link
// a phone opens in its own maps app.
export function positionFacts(h, t, position) {
  const [lat, lon] = degrees(position);
  const age = Math.max(0, Math.round((Date.now() - Number(position.atMs || 0)) / 60000));
  const source = position.source === 'last_known' ? t('map.lastKnown', { n: age })
    : position.source === 'after_alarm' ? t('map.afterAlarm') : t('map.fromEvent');
  return h('p', { class: 'position', 'data-role': 'position' },
    h('span', { 'data-role': 'coordinates' }, `${lat.toFixed(5)}, ${lon.toFixed(5)}`),
    ` ±${position.location?.accuracyM ?? 0} m`,
    position.location?.room ? ` · ${position.location.room}` : '',
    ` · ${source} · `,
    h('a', { href: `geo:${lat},${lon}`, 'data-role': 'open-in-maps' }, t('map.open')));
}

// A map in `box` centred on [lat, lon] (WGS-84), with the configured tiles;
// its `shift` draws a WGS-84 point in the tiles' datum. Null without
// Leaflet.
export async function baseMap(box, center, zoom) {
  const s = await mapSettings();
  const L = await loadLeaflet().catch(() => null);
  if (!L) return null;
  const shift = s.datum === 'gcj02' ? ([lat, lon]) => toGcj02(lat, lon) : x => x;
  const map = L.map(box, { zoomControl: true, attributionControl: Boolean(s.tileUrl) }).setView(shift(center), zoom);
  if (s.tileUrl) {
    L.tileLayer(s.tileUrl, { maxZoom: 19, attribution: s.attribution || '' }).addTo(map);
  } else {
    box.classList.add('no-tiles');
  }
  map.shift = shift;
  map.unshift = s.datum === 'gcj02'
    // One step of the inverse is within a metre: enough for a zone's edge.
    ? ([lat, lon]) => { const [a, b] = toGcj02(lat, lon); return [2 * lat - a, 2 * lon - b]; }
    : x => x;
  return map;
}

const e7 = p => [Number(p?.latE7 || 0) / 1e7, Number(p?.lonE7 || 0) / 1e7];

// A resident's safe zones on a map: circles and polygons, named.
export function drawZones(map, zones, fit = true) {
  const L = window.L;
  const layers = (zones || []).map(z => {
    const style = { weight: 2, className: 'safe-zone', dashArray: '6 4' };
    const layer = (z.polygon || []).length >= 3
      ? L.polygon(z.polygon.map(p => map.shift(e7(p))), style)
      : L.circle(map.shift(e7(z.center)), { ...style, radius: Number(z.radiusM || 0) });
    layer.bindTooltip(z.hours ? `${z.name} · ${z.hours}` : z.name);
    return layer.addTo(map);
  });
  map.getContainer().dataset.zones = String(layers.length);
  // The zones in view with what was shown (where the resident is now).
  if (layers.length && fit) {
    const bounds = L.featureGroup(layers).getBounds().extend(map.getBounds());
    map.fitBounds(bounds, { padding: [8, 8] });
  }
  return layers;
}

// Draws the map into `box` (a fresh element); returns at once, the map
// comes when Leaflet has loaded.
export async function drawMap(box, position, track = []) {
  const map = await baseMap(box, degrees(position), 17);
  if (!map) return;
  const L = window.L;
  const shift = map.shift;
  const here = shift(degrees(position));
  const accuracy = Number(position.location?.accuracyM || 0);
  if (accuracy > 0) L.circle(here, { radius: accuracy, weight: 1, className: 'accuracy' }).addTo(map);
  if (track.length) {
    const line = [here, ...track.map(p => shift(degrees(p)))];
    L.polyline(line, { weight: 3, className: 'track' }).addTo(map);
    L.circleMarker(line[line.length - 1], { radius: 6, className: 'track-end' }).addTo(map);
  }
  L.marker(here).addTo(map);
  box.dataset.ready = '1';
  return map;
}

// A card: the map, then the facts. `t` translates, `h` builds elements.
export function positionCard(h, t, position, track) {
  const card = h('div', { class: 'card', id: 'position-card' }, h('h3', {}, t('map.title')));
  if (!position?.location) {
    card.append(h('p', { class: 'muted', 'data-role': 'no-position' }, t('map.none')));
    return card;
  }
  const box = h('div', { class: 'map', id: 'map' });
  card.append(box, positionFacts(h, t, position));
  // After the card is in the page (Leaflet measures its box); others may
  // draw on the map once it is there (a resident's safe zones).
  card.map = new Promise(resolve => requestAnimationFrame(() => drawMap(box, position, track).then(resolve)));
  return card;
}
