// The Anxin console: a dispatcher's live queue, alert detail, staff board,
// reports, and a carer's phone view. Plain modules, no build step, no CDN;
// it uses only the public REST/SSE API (docs/protocol.md, docs/dispatch.md).
import { t, lang, setLang } from '/console/i18n.js';
import { positionCard, drawZones } from '/console/map.js';
import { vitalsCard, printView, zonesCard } from '/console/signals.js';

const $ = (selector, root = document) => root.querySelector(selector);
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(c ?? ''));
  return el;
};
const short = (s, prefix) => (s || '').replace(prefix, '');
const prio = a => short(a.priority, 'PRIORITY_');
const stateOf = a => short(a.state, 'ALERT_STATE_');
const kindName = k => t('kind.' + short(k, 'EVENT_KIND_'));
const OPEN = ['NEW', 'OFFERED', 'ACKNOWLEDGED', 'EN_ROUTE', 'ON_SCENE'];
const OUTCOMES = ['attended', 'false_alarm', 'hospital', 'no_answer', 'referred', 'other'];
const num = v => Number(v || 0);
const clock = ms => new Date(num(ms)).toLocaleTimeString(lang());
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - num(ms)) / 1000));
  const text = s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m` : `${Math.floor(s / 3600)}h`;
  return t('ago', { n: text });
}

// ---- state ----
const app = {
  me: null,
  alerts: new Map(),
  // Community names, read once and only by the pages that list places
  // (staff, gateways, reports): the queue needs none, each alert names its
  // resident and community itself.
  places: new Map(),
  placesLoaded: false,
  staff: new Map(),
  live: false,
  selected: null,
  muted: localStorage.getItem('anxin-muted') === '1',
  source: null,
  synced: false,
  // For tests and the curious: how many audible cues have played.
  chimes: 0,
};
window.anxin = app;

// The console keeps only a short-lived session (made at sign-in from the
// person's token, which is then forgotten), in this tab's storage.
const token = () => sessionStorage.getItem('anxin-session');
async function openSession(given) {
  const res = await fetch('/api/v1/sessions', { method: 'POST', headers: { authorization: `Bearer ${given}` } });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, json.error || res.statusText);
  sessionStorage.setItem('anxin-session', json.token);
}
class ApiError extends Error { constructor(status, message) { super(message); this.status = status; } }
async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token()}`, 'content-type': 'application/json' },
    body: method === 'GET' ? undefined : JSON.stringify(body ?? {}),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, json.error || res.statusText);
  return json;
}
function toast(text) {
  const el = $('#toast');
  el.textContent = text;
  el.style.display = 'block';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.style.display = 'none'; }, 4000);
}
async function act(id, action, body) {
  try {
    const alert = await api('POST', `/api/v1/alerts/${id}/${action}`, body);
    app.alerts.set(alert.id, alert);
    render();
    return alert;
  } catch (e) {
    toast(`${t('error')}: ${e.message}`);
    return null;
  }
}

// ---- the live stream: snapshot, then changes; a reconnect replaces the
// whole map with the fresh snapshot, so nothing is missed or shown twice ----
function connect() {
  if (app.source) app.source.close();
  let pending = null;
  const source = new EventSource(`/api/v1/alerts/stream?access_token=${encodeURIComponent(token())}`);
  app.source = source;
  source.onopen = () => { pending = new Map(); };
  source.addEventListener('alert', e => {
    const alert = JSON.parse(e.data);
    if (pending) { pending.set(alert.id, alert); return; }
    const known = app.alerts.has(alert.id);
    app.alerts.set(alert.id, alert);
    if (!known) cue(alert);
    render();
  });
  source.addEventListener('snapshot_end', () => {
    const before = app.alerts;
    app.alerts = pending || new Map();
    pending = null;
    if (app.synced) for (const a of app.alerts.values()) if (!before.has(a.id)) cue(a);
    app.synced = true;
    setLive(true);
    refreshDirectory();
    render();
  });
  source.addEventListener('resync', () => connect());
  source.onerror = async () => {
    setLive(false);
    pending = null;
    if (source.readyState === EventSource.CLOSED) {
      try { await api('GET', '/api/v1/me'); } catch (e) { if (e.status === 401) return signOut(); }
      setTimeout(() => { if (app.source === source) connect(); }, 2000);
    }
  };
}
function setLive(on) {
  app.live = on;
  const el = $('#live');
  el.textContent = on ? t('status.live') : t('status.reconnecting');
  el.className = on ? 'on' : '';
}

// A new P0: two short tones (browser audio; the mute button silences it).
function cue(alert) {
  if (prio(alert) !== 'P0' || !OPEN.includes(stateOf(alert))) return;
  app.chimes += 1;
  if (app.muted) return;
  try {
    const ctx = cue.ctx || (cue.ctx = new AudioContext());
    [0, 0.25].forEach(offset => {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = 880;
      gain.gain.value = 0.2;
      osc.connect(gain).connect(ctx.destination);
      osc.start(ctx.currentTime + offset);
      osc.stop(ctx.currentTime + offset + 0.15);
    });
  } catch { /* no audio device */ }
}

// The staff and gateway boards of the caller's communities (who is on
// duty, holding what; which boxes are in trouble). Never the resident
// directory: alerts carry the resident's name, address and community.
// Both are paged on the server: the console holds the first page of each
// and reads further pages only when the user asks ("More").
async function refreshDirectory() {
  const [board, gateways] = await Promise.all([
    api('GET', '/api/v1/staff/board?limit=200').catch(() => ({ staff: [] })),
    api('GET', '/api/v1/gateways/board?limit=200').catch(() => ({ gateways: [] })),
  ]);
  app.staff = new Map(board.staff.map(s => [s.id, s]));
  app.staffNext = board.next;
  app.gateways = gateways.gateways;
  app.gatewaysNext = gateways.next;
  chrome();
  render();
}
async function morePage(path, key, nextKey, merge) {
  try {
    const page = await api('GET', `${path}?limit=200&after=${encodeURIComponent(app[nextKey])}`);
    merge(page[key]);
    app[nextKey] = page.next;
    render();
  } catch (e) { toast(`${t('error')}: ${e.message}`); }
}
const moreButton = (nextKey, onclick) => app[nextKey]
  ? h('p', {}, h('button', { class: 'more', 'data-more': nextKey, onclick }, t('list.more'))) : '';
async function loadPlaces() {
  if (app.placesLoaded) return;
  app.placesLoaded = true;
  const { places } = await api('GET', '/api/v1/places?limit=1000').catch(() => ({ places: [] }));
  app.places = new Map(places.map(p => [p.id, p]));
  render();
}
const residentName = a => a.residentName || a.residentId || a.deviceId;
const communityName = a => a.communityName || a.communityId || '—';
const staffName = id => app.staff.get(id)?.name || id;

// ---- views ----
const routes = {
  queue: renderQueue,
  alert: renderDetail,
  staff: renderStaff,
  gateways: renderGateways,
  reports: renderReports,
  carer: renderCarer,
  welfare: renderWelfare,
  residents: renderResidents,
  'vitals-print': renderPrint,
};
// Built once per opening (live re-renders must not read and audit again).
function renderPrint(arg) {
  const id = decodeURIComponent((arg || '').split('?')[0]);
  if (app.printing?.id !== id || !document.contains(app.printing.node)) {
    app.printing = { id, node: printView(signalsContext(), id) };
  }
  return app.printing.node;
}
const signalsContext = () => ({ h, t, api, toast });
const VITALS_KINDS = ['EVENT_KIND_VITALS_WARNING', 'EVENT_KIND_VITALS_CRITICAL'];
function route() {
  const [name, arg] = location.hash.replace(/^#\/?/, '').split('/');
  return routes[name] ? { name, arg } : { name: isCarer() ? 'carer' : 'queue' };
}
const isCarer = () => ['carer', 'nurse'].includes(app.me?.role);
function render() {
  if (!app.me) return;
  const { name, arg } = route();
  for (const link of document.querySelectorAll('#nav a')) link.classList.toggle('active', link.dataset.route === name);
  const view = $('#view');
  const focused = document.activeElement;
  // Keep what the user is typing (notes) across live re-renders.
  if (focused && view.contains(focused) && ['TEXTAREA', 'INPUT', 'SELECT'].includes(focused.tagName)) return;
  view.replaceChildren(routes[name](arg));
}

function openAlerts() {
  return [...app.alerts.values()]
    .filter(a => OPEN.includes(stateOf(a)))
    .sort((a, b) => prio(a).localeCompare(prio(b)) || num(a.createdMs) - num(b.createdMs));
}

function countdown(a) {
  const deadline = num(a.offerDeadlineMs);
  if (stateOf(a) !== 'OFFERED' || !deadline) return h('span', { class: 'countdown muted' }, '—');
  const left = Math.round((deadline - Date.now()) / 1000);
  const cls = left <= 0 ? 'late' : left <= 15 ? 'soon' : '';
  return h('span', { class: `countdown ${cls}`, 'data-deadline': deadline }, left <= 0 ? t('overdue') : `${left}s`);
}

function renderQueue() {
  const rows = openAlerts();
  if (!rows.some(a => a.id === app.selected)) app.selected = rows[0]?.id ?? null;
  const table = h('table', { id: 'queue' },
    h('thead', {}, h('tr', {},
      ...['col.priority', 'col.kind', 'col.resident', 'col.community', 'col.age', 'col.state', 'col.who', 'col.deadline', 'col.battery']
        .map(k => h('th', { class: ['col.community', 'col.battery'].includes(k) ? 'wide' : '' }, t(k))))),
    h('tbody', {}, rows.map(a => h('tr', {
      class: `alert-row ${prio(a)} ${a.id === app.selected ? 'selected' : ''}`,
      'data-alert-id': a.id,
      onclick: () => { location.hash = `#/alert/${a.id}`; },
    },
      h('td', {}, h('span', { class: `badge ${prio(a)}` }, prio(a))),
      h('td', {}, kindName(a.kind), a.events?.length > 1 ? h('span', { class: 'muted' }, ` ×${a.events.length}`) : ''),
      h('td', {}, residentName(a)),
      h('td', { class: 'wide' }, communityName(a)),
      h('td', { title: clock(a.createdMs) }, ago(a.createdMs)),
      h('td', { class: 'state' }, t('state.' + stateOf(a)),
        num(a.escalationLevel) ? h('span', { class: 'muted' }, ` · ${t('escalation', { n: a.escalationLevel })}`) : ''),
      h('td', {}, a.offeredTo ? staffName(a.offeredTo) : a.assignedTo ? staffName(a.assignedTo)
        : short(a.escalationStep, 'ESCALATION_STEP_') === 'EMERGENCY_SERVICES' ? t('step.EMERGENCY_SERVICES') : '—'),
      h('td', {}, countdown(a)),
      h('td', { class: 'wide' }, `${a.batteryPct ?? 0}%`),
    ))));
  return h('section', {}, h('h2', {}, `${t('queue.title')} (${rows.length})`),
    rows.length ? table : h('p', { class: 'muted', id: 'queue-empty' }, t('queue.empty')));
}

function actionButtons(a, { carer = false } = {}) {
  const s = stateOf(a);
  const buttons = [];
  const add = (key, action, opts = {}) => buttons.push(h('button', {
    class: `act ${opts.cls || ''}`, 'data-action': action,
    onclick: opts.onclick || (() => act(a.id, action, opts.body)),
  }, t(key)));
  if (['NEW', 'OFFERED'].includes(s)) add(carer ? 'act.accept' : 'act.ack', 'ack', { cls: 'primary' });
  if (carer && s === 'OFFERED' && a.offeredTo === app.me.id) add('act.decline', 'decline');
  if (s === 'ACKNOWLEDGED') add('act.en_route', 'en_route', { cls: carer ? 'primary' : '' });
  if (['ACKNOWLEDGED', 'EN_ROUTE'].includes(s)) add(carer ? 'act.arrived' : 'act.on_scene', 'on_scene', { cls: carer && s === 'EN_ROUTE' ? 'primary' : '' });
  if (['ACKNOWLEDGED', 'EN_ROUTE', 'ON_SCENE'].includes(s)) {
    const select = h('select', { 'data-role': 'outcome', 'aria-label': t('detail.outcome') },
      OUTCOMES.map(o => h('option', { value: o }, t('outcome.' + o))));
    buttons.push(select);
    add('act.resolve', 'resolve', { cls: s === 'ON_SCENE' ? 'primary' : '', onclick: () => act(a.id, 'resolve', { outcome: select.value }) });
  }
  if (!carer && ['NEW', 'OFFERED'].includes(s)) add('act.escalate', 'escalate', { cls: 'danger' });
  if (!carer && ['NEW', 'OFFERED', 'ACKNOWLEDGED'].includes(s)) add('act.cancel', 'cancel');
  return h('div', { class: 'actions' }, buttons);
}

function renderDetail(id) {
  const a = app.alerts.get(id);
  if (!a) {
    api('GET', `/api/v1/alerts/${id}`).then(alert => { app.alerts.set(alert.id, alert); render(); })
      .catch(e => toast(`${t('error')}: ${e.message}`));
    return h('p', { class: 'muted' }, '…');
  }
  app.selected = id;
  const residentCard = h('div', { class: 'card', id: 'resident-card' }, h('h3', {}, t('detail.resident')));
  const where = positionCard(h, t, a.position, a.track || []);
  // The resident's safe zones on the alert's map (where they should be).
  if (a.residentId) {
    loadResident(a.residentId, residentCard).then(r => {
      if (r?.safeZones?.length && where.map) where.map.then(map => map && drawZones(map, r.safeZones));
    });
  } else residentCard.append(h('p', { class: 'muted' }, t('detail.noResident')));
  const welfareCard = h('div', { class: 'card', id: 'welfare-card' }, h('h3', {}, t('detail.welfare')));
  if (a.residentId) loadWelfare(a.residentId, a.id, welfareCard);

  const timeline = [];
  const push = (ms, text) => { if (num(ms)) timeline.push([num(ms), text]); };
  push(a.createdMs, t('tl.raised'));
  for (const e of a.events || []) push(e.receivedMs, `${t('tl.event')}: ${kindName(e.kind)} (${e.deviceId} #${e.seq})`);
  if (a.offeredTo) push(a.offeredMs, t('tl.offered', { who: staffName(a.offeredTo) }));
  else if (short(a.escalationStep, 'ESCALATION_STEP_') === 'EMERGENCY_SERVICES') push(a.offeredMs, t('step.EMERGENCY_SERVICES'));
  push(a.acknowledgedMs, t('tl.acknowledged', { who: staffName(a.acknowledgedBy) }));
  push(a.enRouteMs, t('tl.en_route'));
  push(a.onSceneMs, t('tl.on_scene'));
  push(a.resolvedMs, t('tl.resolved', { who: staffName(a.resolvedBy), outcome: t('outcome.' + a.outcome) }));
  push(a.cancelledMs, t('tl.cancelled', { outcome: t('outcome.' + a.outcome) }));
  for (const n of a.notes || []) push(n.atMs, `${t('tl.note', { who: staffName(n.by) })}: ${n.text}`);
  timeline.sort((x, y) => x[0] - y[0]);

  const assign = h('select', { 'data-role': 'assign', 'aria-label': t('act.assign') },
    [...app.staff.values()].filter(s => ['STAFF_ROLE_CARER', 'STAFF_ROLE_NURSE', 'STAFF_ROLE_SUPERVISOR'].includes(s.role))
      .map(s => h('option', { value: s.id }, `${s.name} · ${t('role.' + short(s.role, 'STAFF_ROLE_'))}${s.onDuty ? '' : ' · ' + t('staff.off')}`)));
  const note = h('textarea', { id: 'note', rows: 2, placeholder: t('detail.notePlaceholder') });
  const open = OPEN.includes(stateOf(a));
  return h('section', { id: 'detail', 'data-alert-id': a.id },
    h('p', {}, h('a', { href: '#/queue' }, t('detail.back'))),
    h('h2', {}, h('span', { class: `badge ${prio(a)}` }, prio(a)), ' ', kindName(a.kind), ' · ',
      h('span', { class: 'state' }, t('state.' + stateOf(a))), ' ', countdown(a),
      num(a.escalationLevel) ? h('span', { class: 'muted' }, ` · ${t('escalation', { n: a.escalationLevel })} (${t('step.' + short(a.escalationStep, 'ESCALATION_STEP_'))})`) : ''),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h3', {}, t('detail.actions')),
        actionButtons(a),
        open ? h('div', { class: 'actions' }, assign, h('button', { class: 'act', 'data-action': 'assign', onclick: () => act(a.id, 'assign', { staffId: assign.value }) }, t('act.assign'))) : '',
        h('div', { class: 'actions' }, note, h('button', { class: 'act', 'data-action': 'note', onclick: async () => {
          if (!note.value.trim()) return;
          const text = note.value;
          note.value = '';
          note.blur();
          await act(a.id, 'note', { note: text });
        } }, t('act.note'))),
        h('h3', {}, t('detail.timeline')),
        h('ol', { class: 'timeline' }, timeline.map(([ms, text]) => h('li', {}, h('time', {}, clock(ms)), text)))),
      residentCard,
      where,
      a.residentId && (a.events || []).some(e => VITALS_KINDS.includes(e.kind)) ? alertVitals(a) : '',
      a.family ? familyCard(a) : '',
      short(a.escalationStep, 'ESCALATION_STEP_') === 'EMERGENCY_SERVICES' ? handoffCard(a) : '',
      a.residentId ? welfareCard : '',
      h('div', { class: 'card' }, h('h3', {}, t('detail.device')),
        h('dl', {},
          h('dt', {}, t('detail.device')), h('dd', {}, a.deviceId),
          h('dt', {}, t('detail.battery')), h('dd', {}, `${a.batteryPct ?? 0}%`),
          h('dt', {}, t('detail.gateway')), h('dd', {}, a.gatewayId),
          h('dt', {}, t('detail.kind')), h('dd', {}, a.deviceKind ? t('device.' + a.deviceKind) : '—'),
          h('dt', {}, t('col.community')), h('dd', {}, communityName(a))))));
}

// An alert about vital signs shows the resident's trend; kept across the
// detail's live re-renders (each read of it is audited).
function alertVitals(a) {
  if (app.alertVitals?.id !== a.id) app.alertVitals = { id: a.id, node: vitalsCard(signalsContext(), a.residentId) };
  return app.alertVitals.node;
}

// The family's side of an alert: every message sent to a contact (with
// whether it has reached them) and every answer, as it happens.
function familyCard(a) {
  const f = a.family;
  const takenBy = f.takenBy ? (f.messages || []).find(m => m.phone === f.takenBy)?.name || f.takenBy : '';
  return h('div', { class: 'card', id: 'family-card' },
    h('h3', {}, t('family.title'), ' ', h('span', { class: 'muted' }, t('family.policy.' + f.policy))),
    takenBy ? h('p', { class: 'notice', 'data-role': 'family-taken' }, t('family.takenBy', { who: takenBy })) : '',
    h('ol', { class: 'timeline' }, (f.messages || []).map(m => h('li', { 'data-kind': m.kind, 'data-status': m.status || '' },
      h('time', {}, clock(m.atMs)),
      `${m.name} · ${t('family.kind.' + m.kind)}`,
      m.deliveryId ? h('span', { class: m.status === 'queued' ? 'late' : 'muted', 'data-role': 'delivery' },
        ` · ${m.quiet ? t('family.quiet') : (m.status || '').startsWith('failed') ? m.status : t('family.status.' + m.status)}`) : '',
      m.late ? h('span', { class: 'muted' }, ` · ${t('family.late')}`) : ''))));
}

// The hand-off to the emergency services: the sheet a 120 call-taker needs,
// and their reference recorded back on the alert.
function handoffCard(a) {
  const input = h('input', { id: 'cad-reference', value: a.emergencyReference || '', 'aria-label': t('handoff.reference') });
  const sheet = h('pre', { class: 'handoff', 'data-role': 'handoff-text' });
  // Reading the sheet reads the resident's sensitive fields: audited.
  const open = async () => {
    try { sheet.textContent = (await api('GET', `/api/v1/alerts/${a.id}/handoff`)).text; }
    catch (e) { toast(`${t('error')}: ${e.message}`); }
  };
  return h('div', { class: 'card', id: 'handoff-card' }, h('h3', {}, t('handoff.title')),
    h('button', { class: 'act', 'data-action': 'handoff', onclick: open }, t('handoff.open')), sheet,
    h('div', { class: 'actions' }, input, h('button', { class: 'act', 'data-action': 'reference', onclick: async () => {
      try {
        const alert = await api('POST', `/api/v1/alerts/${a.id}/reference`, { reference: input.value });
        app.alerts.set(alert.id, alert);
        render();
      } catch (e) { toast(`${t('error')}: ${e.message}`); }
    } }, t('handoff.save'))));
}

// Each view of the card reads the resident's record, and the server audits
// each read; the card is not cached.
async function loadResident(id, card) {
  try {
    const r = await api('GET', `/api/v1/residents/${id}`);
    card.append(h('dl', {},
      h('dt', {}, t('col.resident')), h('dd', { id: 'resident-name' }, r.name),
      h('dt', {}, t('detail.address')), h('dd', {}, r.address),
      h('dt', {}, t('detail.phone')), h('dd', {}, r.phone || '—'),
      h('dt', {}, t('detail.medical')), h('dd', { id: 'medical-notes' }, r.medicalNotes || '—'),
      h('dt', {}, t('detail.contacts')), h('dd', {}, (r.emergencyContacts || []).map(c => `${c.name} (${c.relation}) ${c.phone}`).join('; ') || '—'),
      h('dt', {}, t('detail.access')), h('dd', {}, r.accessNotes || '—')),
      h('p', { class: 'notice' }, t('detail.audited')));
    return r;
  } catch (e) {
    card.append(h('p', { class: 'error' }, e.message));
    return null;
  }
}

function renderStaff() {
  const rows = [...app.staff.values()].sort((a, b) => (b.onDuty - a.onDuty) || a.name.localeCompare(b.name));
  return h('section', {}, h('h2', {}, t('staff.title')),
    h('table', { id: 'staff-board' },
      h('thead', {}, h('tr', {}, ...['staff.name', 'staff.role', 'staff.communities', 'staff.onDuty', 'staff.load', 'staff.status'].map(k => h('th', {}, t(k))))),
      h('tbody', {}, rows.map(s => {
        const load = (s.offers?.length || 0) + (s.assigned?.length || 0);
        const status = !s.onDuty ? 'off' : load ? 'busy' : 'available';
        return h('tr', { 'data-staff-id': s.id },
          h('td', {}, s.name), h('td', {}, t('role.' + short(s.role, 'STAFF_ROLE_'))),
          h('td', {}, (s.communityNames || s.communities || []).join(', ')),
          h('td', {}, s.onDuty ? '✓' : '—'), h('td', {}, String(load)), h('td', { class: 'status' }, t('staff.' + status)));
      }))),
    moreButton('staffNext', () => morePage('/api/v1/staff/board', 'staff', 'staffNext',
      list => { for (const s of list) app.staff.set(s.id, s); })));
}

// Gateways in trouble first: a dispatcher must see a household box that
// cannot store or forward alarms before a resident needs it.
const GATEWAY_ORDER = { offline: 0, degraded: 1, unknown: 2, ok: 3 };
const gatewaysInTrouble = () => (app.gateways || []).filter(g => g.state === 'offline' || g.state === 'degraded');
function renderGateways() {
  const rows = [...(app.gateways || [])].sort((a, b) => (GATEWAY_ORDER[a.state] - GATEWAY_ORDER[b.state]) || a.id.localeCompare(b.id));
  const mib = b => b == null ? '—' : num(b) >= 1073741824 ? `${(num(b) / 1073741824).toFixed(1)} GiB` : `${(num(b) / 1048576).toFixed(1)} MiB`;
  return h('section', {}, h('h2', {}, t('gw.title')),
    h('table', { id: 'gateway-board' },
      h('thead', {}, h('tr', {}, ...['gw.name', 'gw.community', 'gw.state', 'gw.reasons', 'gw.since', 'gw.diskFree', 'gw.queued'].map(k => h('th', {}, t(k))))),
      h('tbody', {}, rows.map(g => h('tr', { 'data-gateway-id': g.id, class: `gw-${g.state}` },
        h('td', {}, g.name || g.id), h('td', {}, g.communityName || g.communityId || '—'),
        h('td', { class: 'status' }, t('gw.state.' + g.state)),
        h('td', { class: 'reasons' }, (g.reasons || []).map(r => t('gw.reason.' + r)).join(', ') || '—'),
        h('td', {}, g.sinceMs ? new Date(num(g.sinceMs)).toLocaleString() : '—'),
        h('td', {}, mib(g.diskFreeBytes)), h('td', {}, g.journalDepth ?? '—'))))),
    moreButton('gatewaysNext', () => morePage('/api/v1/gateways/board', 'gateways', 'gatewaysNext',
      list => { app.gateways = [...app.gateways, ...list]; })));
}

// ---- the resident directory: searched and paged on the server; a
// resident's full record is read (and audited) only when opened ----
app.dir = { q: '', after: '', before: [], page: null, loading: false };
async function loadDirectory() {
  const d = app.dir;
  d.loading = true;
  try {
    const query = new URLSearchParams({ limit: '50', q: d.q, after: d.after });
    d.page = await api('GET', `/api/v1/residents?${query}`);
  } catch (e) {
    d.page = { residents: [], next: null, error: e.message };
  }
  d.loading = false;
  render();
}
function renderResidents(id) {
  if (id) return renderResident(id);
  const d = app.dir;
  if (!d.page && !d.loading) loadDirectory();
  const search = h('input', { id: 'resident-search', type: 'search', value: d.q, placeholder: t('dir.searchHint'), 'aria-label': t('dir.search') });
  const go = () => { d.q = search.value.trim(); d.after = ''; d.before = []; loadDirectory(); };
  search.addEventListener('keydown', e => { if (e.key === 'Enter') { e.preventDefault(); search.blur(); go(); } });
  const rows = d.page?.residents || [];
  return h('section', { id: 'directory' }, h('h2', {}, t('dir.title')),
    h('div', { class: 'actions' }, search, h('button', { id: 'resident-search-go', onclick: go }, t('dir.search'))),
    d.page?.error ? h('p', { class: 'error' }, d.page.error) : '',
    h('table', { id: 'resident-list' },
      h('thead', {}, h('tr', {}, ...['col.resident', 'col.community', 'detail.address', 'detail.phone', 'dir.id'].map(k => h('th', {}, t(k))))),
      h('tbody', {}, rows.map(r => h('tr', { 'data-resident-id': r.id },
        h('td', {}, h('a', { href: `#/residents/${encodeURIComponent(r.id)}` }, r.name)),
        h('td', {}, r.communityName || r.communityId), h('td', {}, r.address || '—'),
        h('td', {}, r.phone || '—'), h('td', { class: 'muted' }, r.id))))),
    !d.loading && d.page && !rows.length ? h('p', { class: 'muted', id: 'resident-none' }, t('dir.none')) : '',
    h('p', { class: 'actions' },
      d.before.length ? h('button', { id: 'page-prev', onclick: () => { d.after = d.before.pop(); loadDirectory(); } }, t('list.prev')) : '',
      d.page?.next ? h('button', { id: 'page-next', onclick: () => { d.before.push(d.after); d.after = d.page.next; loadDirectory(); } }, t('list.next')) : ''));
}
// Built once per opening: a live re-render of the page must not read (and
// audit) the record again.
function renderResident(id) {
  if (app.dir.open?.id === id) return app.dir.open.node;
  const card = h('div', { class: 'card', id: 'resident-card' }, h('h3', {}, t('detail.resident')));
  const zones = h('div', { id: 'zones-slot' });
  // One read of the record (audited) serves the card and the zone editor.
  loadResident(id, card).then(r => { if (r) zones.replaceWith(zonesCard(signalsContext(), r)); });
  const welfare = h('div', { class: 'card', id: 'welfare-card' }, h('h3', {}, t('detail.welfare')));
  loadWelfare(id, '', welfare);
  const devices = h('div', { class: 'card', id: 'resident-devices' }, h('h3', {}, t('dir.devices')));
  loadResidentDevices(id, devices);
  const node = h('section', { id: 'resident-page', 'data-resident-id': id },
    h('p', {}, h('a', { href: '#/residents', onclick: () => { app.dir.open = null; } }, t('dir.back'))),
    h('div', { class: 'grid' }, card, welfare, devices, vitalsCard(signalsContext(), id), zones));
  app.dir.open = { id, node };
  return node;
}
async function loadResidentDevices(id, card) {
  try {
    const { devices } = await api('GET', `/api/v1/devices?resident=${encodeURIComponent(id)}&limit=20`);
    if (!devices.length) card.append(h('p', { class: 'muted' }, t('dir.noDevices')));
    for (const d of devices) {
      const events = await api('GET', `/api/v1/devices/${encodeURIComponent(d.id)}/events?limit=5`).catch(() => ({ events: [] }));
      card.append(h('h4', {}, `${d.kind ? t('device.' + d.kind) : ''} · ${d.id}${d.deactivated ? ' · ' + t('dir.deactivated') : ''}`),
        h('ul', { class: 'events' }, (events.events || []).slice(-5).reverse().map(e =>
          h('li', {}, h('time', {}, clock(e.receivedMs)), ' ', kindName(e.kind)))));
    }
  } catch (e) {
    card.append(h('p', { class: 'error' }, e.message));
  }
}

function renderReports() {
  loadPlaces();
  const communities = [...app.places.values()].filter(p => p.level === 'PLACE_LEVEL_COMMUNITY');
  const pick = h('select', { id: 'report-community' }, communities.map(c => h('option', { value: c.id }, c.name)));
  const period = h('select', { id: 'report-period' }, [7, 30, 365].map(n => h('option', { value: n }, t('reports.days', { n }))));
  const out = h('div', { id: 'report' });
  const load = async () => {
    const to = Date.now();
    const from = to - Number(period.value) * 86400000;
    const query = `community=${encodeURIComponent(pick.value)}&from=${from}&to=${to}`;
    try {
      const r = await api('GET', `/api/v1/reports?${query}`);
      out.replaceChildren(reportView(r, query));
    } catch (e) { out.replaceChildren(h('p', { class: 'error' }, e.message)); }
  };
  pick.onchange = load; period.onchange = load;
  if (communities.length) setTimeout(load);
  return h('section', {}, h('h2', {}, t('reports.title')),
    h('div', { class: 'actions' }, t('reports.community'), pick, t('reports.period'), period), out);
}

function bars(title, items) {
  if (!items.length) return h('div', { class: 'card' }, h('h3', {}, title), h('p', { class: 'muted' }, t('reports.none')));
  const max = Math.max(1, ...items.map(([, v]) => v));
  const width = 320, row = 22;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('width', width + 160);
  svg.setAttribute('height', items.length * row + 4);
  items.forEach(([label, value, text], i) => {
    const y = i * row;
    svg.insertAdjacentHTML('beforeend',
      `<text x="0" y="${y + 15}" font-size="12">${label}</text>` +
      `<rect x="120" y="${y + 3}" width="${Math.max(1, (value / max) * width)}" height="15" fill="#1565c0"></rect>` +
      `<text x="${126 + (value / max) * width}" y="${y + 15}" font-size="12">${text ?? value}</text>`);
  });
  return h('div', { class: 'card' }, h('h3', {}, title), svg);
}

function reportView(r, query) {
  const secs = ms => `${Math.round(num(ms) / 1000)} s`;
  const pct = p => p && num(p.count) ? [[t('reports.median'), num(p.medianMs), secs(p.medianMs)], [t('reports.p90'), num(p.p90Ms), secs(p.p90Ms)], [t('reports.p99'), num(p.p99Ms), secs(p.p99Ms)]] : [];
  const csv = h('button', { class: 'act', onclick: async () => {
    const res = await fetch(`/api/v1/reports?${query}&format=csv`, { headers: { authorization: `Bearer ${token()}` } });
    const link = h('a', { href: URL.createObjectURL(await res.blob()), download: 'anxin-report.csv' });
    link.click();
  } }, t('reports.csv'));
  return h('div', { class: 'stack' },
    h('div', { class: 'card' }, h('dl', {},
      h('dt', {}, t('reports.alerts')), h('dd', { id: 'report-alerts' }, String(num(r.alerts))),
      h('dt', {}, t('reports.within', { n: Math.round(num(r.targetMs) / 1000) })),
      h('dd', {}, `${Math.round(num(r.acknowledgedWithinTarget) * 100)}%`)), csv),
    h('div', { class: 'card', id: 'report-welfare' }, h('h3', {}, t('reports.welfare')), h('dl', {},
      h('dt', {}, t('reports.coverage')), h('dd', { id: 'report-coverage' }, num(r.checkinDays) ? `${Math.round(num(r.checkinCoverage) * 100)}% (${num(r.checkinDaysOk)} / ${num(r.checkinDays)})` : '—'),
      h('dt', {}, t('reports.missed')), h('dd', {}, String(num(r.checkinsMissed))),
      h('dt', {}, t('reports.missedAck')), h('dd', {}, num(r.missedCheckinToAcknowledge?.count) ? secs(r.missedCheckinToAcknowledge.medianMs) : '—'),
      h('dt', {}, t('reports.missedResolve')), h('dd', {}, num(r.missedCheckinToResolve?.count) ? secs(r.missedCheckinToResolve.medianMs) : '—'),
      h('dt', {}, t('reports.visits')), h('dd', { id: 'report-visits' }, t('reports.visitFigures', { planned: num(r.visitsPlanned), done: num(r.visitsDone), missed: num(r.visitsMissed) })))),
    h('div', { class: 'bars' },
      bars(t('reports.ack'), pct(r.timeToAcknowledge)),
      bars(t('reports.arrive'), pct(r.timeToArrive)),
      bars(t('reports.byKind'), (r.byKind || []).map(k => [kindName(k.kind), num(k.count)])),
      bars(t('reports.byOutcome'), (r.byOutcome || []).map(o => [t('outcome.' + o.outcome), num(o.count)]))));
}

function renderCarer() {
  const mine = [...app.alerts.values()].filter(a => OPEN.includes(stateOf(a)));
  const offers = mine.filter(a => stateOf(a) === 'OFFERED' && a.offeredTo === app.me.id);
  const taken = mine.filter(a => a.assignedTo === app.me.id && stateOf(a) !== 'OFFERED');
  const card = a => {
    return h('div', { class: `card offer-card ${prio(a)}`, 'data-alert-id': a.id },
      h('h3', {}, h('span', { class: `badge ${prio(a)}` }, prio(a)), ' ', kindName(a.kind), ' · ', t('state.' + stateOf(a)), ' ', countdown(a)),
      h('p', {}, h('strong', {}, residentName(a)), h('br'), a.address || '', h('br'), h('span', { class: 'muted' }, ago(a.createdMs))),
      actionButtons(a, { carer: true }));
  };
  const visits = h('div', { class: 'stack', id: 'carer-visits' });
  loadCarerVisits(visits);
  return h('section', { class: 'stack', id: 'carer' },
    h('h2', {}, t('carer.offers')), ...(offers.length ? offers.map(card) : [h('p', { class: 'muted' }, t('carer.none'))]),
    h('h2', {}, t('carer.mine')), ...taken.map(card),
    h('h2', {}, t('carer.visits')), visits);
}

// ---- living alone: daily check-ins and scheduled visits ----
// Lists read less than this long ago are reused by live re-renders.
const FRESH_MS = 10_000;
const weekdayNames = days => (days || []).map(d => t('weekday.' + d)).join(' ');
const when = ms => num(ms) ? new Date(num(ms)).toLocaleString(lang()) : '—';
function signText(s) {
  if (!s) return t('welfare.noSign');
  return `${when(s.atMs)} · ${t('sign.' + s.how)} · ${staffName(s.source)}`;
}
const statusBadge = (status, prefix) => h('span', { class: `status-badge st-${status}` }, t(prefix + status));

function checkinTable(list) {
  const count = status => list.filter(c => c.status === status).length;
  return h('div', {},
    h('p', { id: 'checkin-summary' }, t('welfare.summary', {
      ok: count('ok') + count('late'), pending: count('pending'), missed: count('missed'),
    })),
    list.length ? h('table', { id: 'checkins' },
      h('thead', {}, h('tr', {}, ...['col.status', 'col.resident', 'col.community', 'col.window', 'col.lastSign', 'col.alert', ''].map(k => h('th', {}, k ? t(k) : '')))),
      h('tbody', {}, list.map(c => h('tr', { 'data-resident-id': c.residentId, class: `checkin-${c.status}` },
        h('td', {}, statusBadge(c.status, 'checkin.')),
        h('td', {}, c.residentName),
        h('td', {}, c.communityName || c.communityId),
        h('td', {}, c.window),
        h('td', {}, signText(c.lastSign)),
        h('td', {}, c.alertId ? h('a', { href: `#/alert/${c.alertId}` }, `#${c.alertId}`) : '—'),
        h('td', {}, ['pending', 'missed'].includes(c.status) ? h('button', {
          class: 'act', 'data-action': 'confirm-well', onclick: async () => {
            try {
              await api('POST', `/api/v1/residents/${c.residentId}/checkin`, { note: t('welfare.confirmNote') });
              toast(t('welfare.confirmed', { who: c.residentName }));
              app.welfareData = null;
              render();
            } catch (e) { toast(`${t('error')}: ${e.message}`); }
          },
        }, t('welfare.confirm')) : ''))))) : h('p', { class: 'muted' }, t('welfare.noneEnrolled')));
}

function visitTable(list) {
  if (!list.length) return h('p', { class: 'muted' }, t('visit.none'));
  return h('table', { id: 'visits' },
    h('thead', {}, h('tr', {}, ...['col.status', 'col.resident', 'col.address', 'plan.carer', 'col.arrived', 'col.note'].map(k => h('th', {}, t(k))))),
    h('tbody', {}, list.map(v => h('tr', { 'data-plan-id': v.planId, class: `visit-${v.status}` },
      h('td', {}, statusBadge(v.status, 'visit.')),
      h('td', {}, v.residentName),
      h('td', {}, v.address),
      h('td', {}, v.visitedBy ? staffName(v.visitedBy) : v.carerId ? staffName(v.carerId) : t('plan.anyCarer')),
      h('td', {}, v.status === 'missed' ? t('visit.flagged', { at: when(v.flaggedMs) }) : when(v.arrivedMs)),
      h('td', {}, v.note || v.planNote || '—')))));
}

function planTable(plans) {
  if (!plans.length) return h('p', { class: 'muted' }, t('plan.none'));
  return h('table', { id: 'visit-plans' },
    h('thead', {}, h('tr', {}, ...['col.resident', 'col.community', 'plan.weekdays', 'plan.carer', 'col.note', 'plan.active'].map(k => h('th', {}, t(k))))),
    h('tbody', {}, plans.map(p => h('tr', { 'data-plan-id': p.id },
      h('td', {}, p.residentName || p.residentId),
      h('td', {}, p.communityName || p.communityId),
      h('td', {}, weekdayNames(p.weekdays)),
      h('td', {}, p.carerId ? staffName(p.carerId) : t('plan.anyCarer')),
      h('td', {}, p.note || '—'),
      h('td', {}, p.active ? '✓' : '—')))));
}

function renderWelfare() {
  const day = h('input', { type: 'date', id: 'welfare-day', value: app.welfareDay || '', 'aria-label': t('welfare.day') });
  const checkins = h('div', { id: 'checkin-list' }, h('p', { class: 'muted' }, '…'));
  const visits = h('div', { id: 'visit-list' }, h('p', { class: 'muted' }, '…'));
  const plans = h('div', { id: 'plan-list' }, h('p', { class: 'muted' }, '…'));
  const title = h('h2', {}, t('welfare.title'));
  const fill = ({ c, v, p }) => {
    const shown = c.checkins[0]?.day || v.visits[0]?.day;
    if (shown) title.textContent = `${t('welfare.title')} · ${shown}`;
    checkins.replaceChildren(checkinTable(c.checkins));
    visits.replaceChildren(visitTable(v.visits));
    plans.replaceChildren(planTable(p.plans));
  };
  // Live re-renders (every alert change) reuse what was read in the last
  // few seconds; a new day or an action reads again.
  const load = async () => {
    app.welfareDay = day.value;
    const cached = app.welfareData;
    if (cached && cached.day === day.value && Date.now() - cached.at < FRESH_MS) return fill(cached);
    const q = day.value ? `?day=${day.value}` : '';
    try {
      const [c, v, p] = await Promise.all([
        api('GET', `/api/v1/checkins${q}`), api('GET', `/api/v1/visits${q}`), api('GET', '/api/v1/visit-plans'),
      ]);
      app.welfareData = { day: day.value, at: Date.now(), c, v, p };
      fill(app.welfareData);
    } catch (e) { checkins.replaceChildren(h('p', { class: 'error' }, e.message)); }
  };
  day.onchange = load;
  // A live re-render shows what was last read at once (no empty tables
  // between renders while the queue changes), then reads again if stale.
  const last = app.welfareData;
  if (last && last.day === day.value) fill(last);
  setTimeout(load);
  return h('section', { id: 'welfare', class: 'stack' }, title,
    h('div', { class: 'actions' }, t('welfare.day'), day, h('span', { class: 'muted' }, t('welfare.dayHint'))),
    h('div', { class: 'card' }, h('h3', {}, t('welfare.checkins')), checkins),
    h('div', { class: 'card' }, h('h3', {}, t('welfare.visits')), visits),
    h('div', { class: 'card' }, h('h3', {}, t('welfare.plans')), plans));
}

async function loadCarerVisits(box) {
  try {
    if (!app.carerVisits || Date.now() - app.carerVisits.at >= FRESH_MS) {
      app.carerVisits = { at: Date.now(), visits: (await api('GET', '/api/v1/visits')).visits };
    }
    const { visits } = app.carerVisits;
    if (!visits.length) { box.replaceChildren(h('p', { class: 'muted' }, t('visit.none'))); return; }
    box.replaceChildren(...visits.map(v => {
      const note = h('textarea', { rows: 2, placeholder: t('visit.notePlaceholder'), 'data-role': 'visit-note' });
      return h('div', { class: `card visit-card visit-${v.status}`, 'data-plan-id': v.planId },
        h('h3', {}, statusBadge(v.status, 'visit.'), ' ', v.residentName),
        h('p', {}, v.address, h('br'), h('span', { class: 'muted' }, v.planNote || '')),
        v.status === 'due' ? h('div', { class: 'actions' }, note, h('button', {
          class: 'act primary', 'data-action': 'arrive', onclick: async () => {
            try {
              await api('POST', `/api/v1/visits/${v.planId}/arrive`, { note: note.value });
              toast(t('visit.recorded', { who: v.residentName }));
              note.blur();
              app.carerVisits = null;
              render();
            } catch (e) { toast(`${t('error')}: ${e.message}`); }
          },
        }, t('visit.arrive'))) : h('p', { class: 'muted' }, `${when(v.arrivedMs)} · ${v.note || ''}`));
    }));
  } catch (e) { box.replaceChildren(h('p', { class: 'error' }, e.message)); }
}

// The alert detail's view of the resident's recent days: no sensitive
// fields, so it needs no audited read.
async function loadWelfare(residentId, alertId, card) {
  try {
    const w = await api('GET', `/api/v1/residents/${residentId}/welfare`);
    const others = (w.recentAlerts || []).filter(a => a.id !== alertId).slice(0, 5);
    card.append(h('dl', {},
      h('dt', {}, t('col.window')), h('dd', {}, w.checkinWindow || t('welfare.notEnrolled')),
      h('dt', {}, t('col.lastSign')), h('dd', { id: 'last-sign' }, signText(w.lastSign))),
    h('h4', {}, t('detail.recentCheckins')),
    (w.checkins || []).length ? h('ul', { class: 'days', id: 'recent-checkins' }, w.checkins.slice(0, 7).map(d =>
      h('li', {}, statusBadge(d.outcome, 'checkin.'), ' ', dayName(d.day)))) : h('p', { class: 'muted' }, '—'),
    h('h4', {}, t('detail.recentAlerts')),
    others.length ? h('ul', { id: 'recent-alerts' }, others.map(a => h('li', {},
      h('a', { href: `#/alert/${a.id}` }, `#${a.id}`), ` ${kindName(a.kind)} · ${when(a.createdMs)} · ${t('state.' + stateOf(a))}`)))
      : h('p', { class: 'muted' }, '—'));
  } catch (e) { card.append(h('p', { class: 'error' }, e.message)); }
}
const dayName = n => new Date(num(n) * 86400000).toISOString().slice(0, 10);

// ---- chrome: header, keyboard, sign-in ----
function chrome() {
  $('#top').hidden = false;
  document.title = `${t('app.title')} · Anxin`;
  $('#title').textContent = t('app.title');
  const links = [['queue', 'nav.queue'], ['welfare', 'nav.welfare'], ['residents', 'nav.residents'], ['staff', 'nav.staff'], ['gateways', 'nav.gateways'], ['reports', 'nav.reports'], ['carer', 'nav.carer']]
    .filter(([name]) => name !== 'reports' || !isCarer());
  const trouble = gatewaysInTrouble().length;
  $('#nav').replaceChildren(...links.map(([name, key]) => h('a', { href: `#/${name}`, 'data-route': name },
    t(key), name === 'gateways' && trouble ? h('span', { class: 'badge', id: 'gateway-trouble', title: t('gw.trouble') }, String(trouble)) : '')));
  const { name: current } = route();
  for (const link of document.querySelectorAll('#nav a')) link.classList.toggle('active', link.dataset.route === current);
  $('#who').textContent = `${app.me.name} · ${t('role.' + app.me.role.toUpperCase())}`;
  $('#mute').textContent = app.muted ? t('nav.unmute') : t('nav.mute');
  $('#help-button').textContent = '?';
  $('#signout').textContent = t('nav.signout');
  $('#help-title').textContent = t('help.title');
  $('#help-keys').textContent = t('help.keys');
  setLive(app.live);
}
function toggleMute() {
  app.muted = !app.muted;
  localStorage.setItem('anxin-muted', app.muted ? '1' : '0');
  chrome();
}
function toggleLang() {
  setLang(lang() === 'en' ? 'zh-CN' : 'en');
  chrome();
  render();
}
function signOut() {
  sessionStorage.removeItem('anxin-session');
  if (app.source) app.source.close();
  location.hash = '';
  location.reload();
}

let pendingG = false;
document.addEventListener('keydown', e => {
  if (!app.me || e.ctrlKey || e.metaKey || e.altKey) return;
  if (['INPUT', 'TEXTAREA', 'SELECT'].includes(e.target.tagName)) {
    if (e.key === 'Escape') e.target.blur();
    return;
  }
  const help = $('#help');
  if (help.style.display === 'flex') { help.style.display = 'none'; return; }
  if (pendingG) {
    pendingG = false;
    if (e.key === 'q') location.hash = '#/queue';
    if (e.key === 's') location.hash = '#/staff';
    if (e.key === 'r') location.hash = '#/reports';
    if (e.key === 'w') location.hash = '#/welfare';
    return;
  }
  const rows = openAlerts();
  const at = rows.findIndex(a => a.id === app.selected);
  const selected = app.alerts.get(app.selected);
  switch (e.key) {
    case 'j': case 'ArrowDown': app.selected = rows[Math.min(rows.length - 1, at + 1)]?.id ?? null; render(); break;
    case 'k': case 'ArrowUp': app.selected = rows[Math.max(0, at - 1)]?.id ?? null; render(); break;
    case 'Enter': if (selected) location.hash = `#/alert/${selected.id}`; break;
    case 'Escape': location.hash = '#/queue'; break;
    case 'a': if (selected) act(selected.id, 'ack'); break;
    case 'e': if (selected) act(selected.id, 'escalate'); break;
    case 'o': if (selected) act(selected.id, 'on_scene'); break;
    case 'r': if (selected) act(selected.id, 'resolve', { outcome: $('select[data-role=outcome]')?.value || 'attended' }); break;
    case 'n': if (route().name === 'alert') { e.preventDefault(); $('#note')?.focus(); } break;
    case 'm': toggleMute(); break;
    case 'l': toggleLang(); break;
    case 'g': pendingG = true; break;
    case '?': help.style.display = 'flex'; break;
    default: return;
  }
});

function loginView(message) {
  $('#top').hidden = true;
  const input = h('input', { id: 'token-input', type: 'password', autocomplete: 'current-password', 'aria-label': t('login.token') });
  const form = h('form', { id: 'login', class: 'card', onsubmit: async e => {
    e.preventDefault();
    start(input.value.trim());
  } },
  h('h2', {}, `${t('app.title')} — ${t('login.title')}`),
  h('label', {}, t('login.token'), input),
  message ? h('p', { class: 'error' }, message) : '',
  h('button', { class: 'act primary', type: 'submit' }, t('login.submit')),
  h('button', { class: 'act', type: 'button', onclick: () => { toggleLang(); loginView(message); } }, '中文 / EN'));
  $('#view').replaceChildren(form);
  input.focus();
}

async function start(typed) {
  const fromHash = new URLSearchParams(location.hash.replace(/^#\/?/, '')).get('token');
  if (fromHash) history.replaceState(null, '', location.pathname);
  const given = typed || fromHash;
  try {
    if (given) await openSession(given);
    if (!token()) return loginView();
    app.me = await api('GET', '/api/v1/me');
  } catch (e) {
    sessionStorage.removeItem('anxin-session');
    return loginView(e.status === 401 ? t('login.bad') : e.message);
  }
  chrome();
  $('#mute').onclick = toggleMute;
  $('#lang').onclick = toggleLang;
  $('#signout').onclick = signOut;
  $('#help-button').onclick = () => { $('#help').style.display = 'flex'; };
  $('#help').onclick = () => { $('#help').style.display = 'none'; };
  setLive(false);
  connect();
  render();
}

window.addEventListener('hashchange', () => { if (!location.hash.startsWith('#/residents/')) app.dir.open = null; render(); });
// Countdowns tick without re-rendering the page.
setInterval(() => {
  for (const el of document.querySelectorAll('.countdown[data-deadline]')) {
    const left = Math.round((Number(el.dataset.deadline) - Date.now()) / 1000);
    el.textContent = left <= 0 ? t('overdue') : `${left}s`;
    el.className = `countdown ${left <= 0 ? 'late' : left <= 15 ? 'soon' : ''}`;
  }
}, 1000);
// The staff board's load and duty change with alerts and shifts.
setInterval(() => { if (app.me) refreshDirectory(); }, 15000);
start();
