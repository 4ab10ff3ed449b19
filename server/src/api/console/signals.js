// Health and safety signals in the console: a resident's vital signs over
// 7, 30 or 90 days as charts (uPlot, bundled) with the limits that hold
// drawn on them and the alerts marked, a printable page for the family
// doctor, and the safe-zone editor (circles or polygons on the map, or as
// coordinates). The rules live on the resident's record.
import { baseMap, drawZones } from './map.js';

let uplot = null;
function loadUplot() {
  if (!uplot) {
    uplot = new Promise((resolve, reject) => {
      const css = document.createElement('link');
      css.rel = 'stylesheet';
      css.href = '/console/uPlot.min.css';
      document.head.append(css);
      const script = document.createElement('script');
      script.src = '/console/uPlot.iife.min.js';
      script.onload = () => resolve(window.uPlot);
      script.onerror = reject;
      document.head.append(script);
    });
  }
  return uplot;
}

const SIGNS = ['spo2', 'heart_rate', 'body_temp', 'systolic', 'diastolic', 'glucose'];
const DAY_MS = 86_400_000;

// The bounds of a limit as lines: [value, level].
function limitLines(limit) {
  if (!limit) return [];
  return [
    [limit.warningBelow, 'warning'], [limit.warningAbove, 'warning'],
    [limit.criticalBelow, 'critical'], [limit.criticalAbove, 'critical'],
  ].filter(([v]) => Number(v) > 0).map(([v, level]) => [Number(v), level]);
}

// One sign's chart: the day's range (min–max) and mean, the limits as
// horizontal lines (amber: warning, red: critical), each vital-sign alert a
// vertical line on its day.
async function chart(h, t, box, sign, days, limit, alerts, width) {
  const U = await loadUplot().catch(() => null);
  if (!U) {
    box.append(h('p', { class: 'error' }, t('vitals.noChart')));
    return;
  }
  const xs = days.map(d => d.day * 86400);
  const mean = days.map(d => Number(d.count) ? d.sum / Number(d.count) : null);
  const lines = limitLines(limit);
  const values = [...days.flatMap(d => [d.min, d.max]), ...lines.map(([v]) => v)];
  const [lo, hi] = [Math.min(...values), Math.max(...values)];
  const pad = Math.max(1, (hi - lo) * 0.1);
  const marks = alerts.map(a => a.day * 86400);
  const style = getComputedStyle(document.documentElement);
  const color = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
  const draw = u => {
    const ctx = u.ctx;
    ctx.save();
    for (const [v, level] of lines) {
      const y = u.valToPos(v, 'y', true);
      ctx.strokeStyle = level === 'critical' ? color('--p0', '#c62828') : color('--p1', '#ef6c00');
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(u.bbox.left, y);
      ctx.lineTo(u.bbox.left + u.bbox.width, y);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    for (const x of marks) {
      const px = u.valToPos(x, 'x', true);
      ctx.strokeStyle = color('--p0', '#c62828');
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(px, u.bbox.top);
      ctx.lineTo(px, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  };
  const opts = {
    width, height: 180,
    title: t('sign.' + sign),
    scales: { x: { time: true }, y: { range: [lo - pad, hi + pad] } },
    series: [
      {},
      { label: t('vitals.min'), stroke: '#90a4ae', width: 1 },
      { label: t('vitals.mean'), stroke: '#1565c0', width: 2, points: { show: true } },
      { label: t('vitals.max'), stroke: '#90a4ae', width: 1 },
    ],
    bands: [{ series: [3, 1], fill: 'rgba(21, 101, 192, 0.08)' }],
    hooks: { draw: [draw] },
  };
  box.dataset.limits = String(lines.length);
  box.dataset.alerts = String(marks.length);
  new U(opts, [xs, days.map(d => d.min), mean, days.map(d => d.max)], box);
  box.dataset.ready = '1';
}

function charts(ctx, trend, box, width) {
  const { h, t } = ctx;
  box.replaceChildren();
  const bySign = new Map();
  for (const d of trend.days || []) {
    if (!bySign.has(d.sign)) bySign.set(d.sign, []);
    bySign.get(d.sign).push(d);
  }
  if (!bySign.size) {
    box.append(h('p', { class: 'muted', 'data-role': 'no-vitals' }, t('vitals.none')));
    return;
  }
  for (const sign of SIGNS.filter(s => bySign.has(s))) {
    const days = bySign.get(sign).sort((a, b) => a.day - b.day);
    const limit = (trend.limits || []).find(l => l.sign === sign);
    const one = h('div', { class: 'chart', 'data-sign': sign });
    box.append(one);
    // Its own cell's width (the grid puts two or three in a row).
    chart(h, t, one, sign, days, limit, trend.alerts || [], Math.max(280, one.clientWidth || width));
  }
}

// The card on a resident's page and an alert's detail.
export function vitalsCard(ctx, residentId) {
  const { h, t, api } = ctx;
  const box = h('div', { class: 'charts', id: 'vitals-charts' });
  const card = h('div', { class: 'card wide', id: 'vitals-card' }, h('h3', {}, t('vitals.title')));
  let span = 30;
  const load = async () => {
    for (const b of card.querySelectorAll('[data-days]')) b.classList.toggle('active', Number(b.dataset.days) === span);
    try {
      const trend = await api('GET', `/api/v1/residents/${encodeURIComponent(residentId)}/vitals?days=${span}`);
      card.dataset.alerts = String((trend.alerts || []).length);
      charts(ctx, trend, box, Math.max(280, box.clientWidth || 520));
    } catch (e) {
      box.replaceChildren(h('p', { class: 'error' }, e.message));
    }
  };
  card.append(
    h('div', { class: 'actions' },
      ...[7, 30, 90].map(n => h('button', { 'data-days': n, onclick: () => { span = n; load(); } }, t('vitals.days', { n }))),
      h('a', { href: `#/vitals-print/${encodeURIComponent(residentId)}`, id: 'vitals-print-link' }, t('vitals.print'))),
    box);
  requestAnimationFrame(load);
  return card;
}

const fmt = v => Number.isFinite(Number(v)) ? (Math.round(Number(v) * 10) / 10).toString() : '—';

// A page for the family doctor (家庭医生): who, the span, the limits, the
// daily figures and the charts; the browser prints it.
export function printView(ctx, residentId) {
  const { h, t, api } = ctx;
  const page = h('section', { id: 'vitals-print', class: 'print' });
  const span = Number(new URLSearchParams(location.hash.split('?')[1] || '').get('days')) || 90;
  (async () => {
    try {
      const trend = await api('GET', `/api/v1/residents/${encodeURIComponent(residentId)}/vitals?days=${span}`);
      const box = h('div', { class: 'charts' });
      const rows = [...(trend.days || [])].sort((a, b) => a.sign.localeCompare(b.sign) || a.day - b.day);
      page.append(
        h('p', { class: 'no-print' }, h('a', { href: `#/residents/${encodeURIComponent(residentId)}` }, t('dir.back')), ' ',
          h('button', { id: 'print-now', onclick: () => window.print() }, t('vitals.printNow'))),
        h('h2', {}, t('vitals.printTitle', { name: trend.residentName })),
        h('p', {}, `${trend.from} – ${trend.to}`,
          (trend.conditions || []).length ? ` · ${t('vitals.conditions')}: ${trend.conditions.join(', ')}` : ''),
        h('h3', {}, t('vitals.limits')),
        h('table', { id: 'print-limits' },
          h('thead', {}, h('tr', {}, ...['vitals.sign', 'vitals.warning', 'vitals.critical'].map(k => h('th', {}, t(k))))),
          h('tbody', {}, (trend.limits || []).map(l => h('tr', {},
            h('td', {}, t('sign.' + l.sign)),
            h('td', {}, `< ${fmt(l.warningBelow)} · > ${fmt(l.warningAbove)}`),
            h('td', {}, `< ${fmt(l.criticalBelow)} · > ${fmt(l.criticalAbove)}`))))),
        box,
        h('h3', {}, t('vitals.alerts')),
        (trend.alerts || []).length
          ? h('ul', { id: 'print-alerts' }, trend.alerts.map(a => h('li', {},
            `${new Date(Number(a.createdMs)).toLocaleString()} · ${a.priority.replace('PRIORITY_', '')} · ${t('kind.' + a.kind.replace('EVENT_KIND_', ''))}`)))
          : h('p', { class: 'muted' }, '—'),
        h('h3', {}, t('vitals.daily')),
        h('table', { id: 'print-days' },
          h('thead', {}, h('tr', {}, ...['vitals.sign', 'vitals.date', 'vitals.min', 'vitals.mean', 'vitals.max', 'vitals.count'].map(k => h('th', {}, t(k))))),
          h('tbody', {}, rows.map(d => h('tr', {},
            h('td', {}, t('sign.' + d.sign)),
            h('td', {}, new Date(d.day * DAY_MS).toISOString().slice(0, 10)),
            h('td', {}, fmt(d.min)), h('td', {}, fmt(d.sum / Number(d.count))), h('td', {}, fmt(d.max)), h('td', {}, String(d.count)))))));
      charts(ctx, trend, box, 640);
      page.dataset.ready = '1';
    } catch (e) {
      page.append(h('p', { class: 'error' }, e.message));
    }
  })();
  return page;
}

// The safe-zone editor: the zones on the map, a click sets a circle's
// centre (or adds a polygon's point), coordinates may be typed instead;
// saved on the resident's record (audited as a rule change).
export function zonesCard(ctx, resident) {
  const { h, t, api, toast } = ctx;
  let zones = structuredClone(resident.safeZones || []);
  let points = [];
  const card = h('div', { class: 'card wide', id: 'zones-card' }, h('h3', {}, t('zones.title')));
  const box = h('div', { class: 'map', id: 'zones-map' });
  const list = h('ul', { id: 'zones-list' });
  const name = h('input', { id: 'zone-name', placeholder: t('zones.name'), value: 'home' });
  const hours = h('input', { id: 'zone-hours', placeholder: '20:00-07:00', title: t('zones.hours'), 'aria-label': t('zones.hours') });
  const radius = h('input', { id: 'zone-radius', type: 'number', value: '150', min: '20', title: t('zones.radius'), 'aria-label': t('zones.radius') });
  const lat = h('input', { id: 'zone-lat', placeholder: t('zones.lat'), 'aria-label': t('zones.lat') });
  const lon = h('input', { id: 'zone-lon', placeholder: t('zones.lon'), 'aria-label': t('zones.lon') });
  const shape = h('select', { id: 'zone-shape' },
    h('option', { value: 'circle' }, t('zones.circle')), h('option', { value: 'polygon' }, t('zones.polygon')));
  let map = null;
  let fitted = false;
  let layers = [];
  let draft = null;
  const redraw = () => {
    list.replaceChildren(...zones.map((z, i) => h('li', { 'data-zone': z.name },
      `${z.name}${z.hours ? ' · ' + z.hours : ''} · ${(z.polygon || []).length >= 3 ? t('zones.points', { n: z.polygon.length }) : `${z.radiusM} m`} `,
      h('button', { onclick: () => { zones.splice(i, 1); redraw(); } }, t('zones.remove')))));
    if (!map) return;
    for (const l of layers) l.remove();
    // Fitted once, when the editor opens: a click must not move the map.
    layers = drawZones(map, zones, !fitted);
    fitted = true;
    if (draft) draft.remove();
    draft = points.length ? window.L.polyline(points.map(p => map.shift(p)), { className: 'zone-draft' }).addTo(map) : null;
  };
  const e7 = v => Math.round(Number(v) * 1e7);
  const add = () => {
    const zone = { name: name.value.trim(), hours: hours.value.trim() };
    if (shape.value === 'polygon') {
      zone.polygon = points.map(([a, b]) => ({ latE7: e7(a), lonE7: e7(b) }));
    } else {
      zone.center = { latE7: e7(lat.value), lonE7: e7(lon.value) };
      zone.radiusM = Number(radius.value);
    }
    zones.push(zone);
    points = [];
    redraw();
  };
  const save = async () => {
    try {
      const stored = await api('PUT', `/api/v1/residents/${encodeURIComponent(resident.id)}`, { ...resident, safeZones: zones });
      resident.safeZones = stored.safeZones;
      card.dataset.saved = String(zones.length);
      toast(t('zones.saved'));
    } catch (e) {
      toast(`${t('error')}: ${e.message}`);
    }
  };
  card.append(box,
    h('p', { class: 'muted' }, t('zones.hint')),
    h('div', { class: 'actions' }, shape, name, hours, radius, lat, lon,
      h('button', { id: 'zone-add', onclick: add }, t('zones.add')),
      h('button', { id: 'zones-save', class: 'act', onclick: save }, t('zones.save'))),
    list);
  requestAnimationFrame(async () => {
    const first = zones[0];
    const center = first?.center ? [Number(first.center.latE7) / 1e7, Number(first.center.lonE7) / 1e7]
      : first?.polygon?.[0] ? [Number(first.polygon[0].latE7) / 1e7, Number(first.polygon[0].lonE7) / 1e7]
        : [31.2304, 121.4737];
    map = await baseMap(box, center, 16);
    if (!map) return;
    map.on('click', e => {
      const [a, b] = map.unshift([e.latlng.lat, e.latlng.lng]);
      if (shape.value === 'polygon') points.push([a, b]);
      lat.value = a.toFixed(6);
      lon.value = b.toFixed(6);
      redraw();
    });
    redraw();
    box.dataset.ready = '1';
  });
  redraw();
  return card;
}
