// The family view: what a resident's family member sees from the link in
// their SMS — the open alarm live (what, when, where, who is coming), today's
// check-in and recent visits — and their answers ("I'm going", "she is
// fine", "call me"). Phone-sized, zh-CN and en. The link is exchanged once
// for a session bound to this contact and this resident; the server answers
// nothing else with it.
import { t, lang, setLang } from '/console/i18n.js';
import { positionCard } from '/console/map.js';

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
const num = v => Number(v || 0);
const clock = ms => new Date(num(ms)).toLocaleTimeString(document.documentElement.lang, { hour: '2-digit', minute: '2-digit' });
const OPEN = ['new', 'offered', 'acknowledged', 'en_route', 'on_scene'];

const family = { view: null, source: null };
window.anxinFamily = family;
const session = () => sessionStorage.getItem('anxin-family');

class ApiError extends Error { constructor(status, message) { super(message); this.status = status; } }
async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${session()}`, 'content-type': 'application/json' },
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

// A used, expired or unknown link: say so and what to do, show nothing else.
function badLink() {
  $('#view').replaceChildren(h('section', { class: 'card', id: 'bad-link' },
    h('h2', {}, t('fv.badLink')), h('p', {}, t('fv.badLinkHelp'))));
}

function alertCard(a) {
  const open = OPEN.includes(a.state);
  const answer = kind => async () => {
    try {
      const updated = await api('POST', `/api/v1/family/alerts/${a.id}/answer`, { answer: kind });
      merge(updated);
      toast(t('fv.sent'));
    } catch (e) { toast(e.message); }
  };
  const mine = (a.messages || []).filter(m => !m.deliveryId);
  return h('section', { class: `card fv-alert ${open ? 'open' : ''}`, 'data-alert-id': a.id, 'data-state': a.state },
    h('h2', {}, h('span', { class: `badge ${a.priority}` }, a.priority), ' ', t('kind.' + a.kind.replace('EVENT_KIND_', ''))),
    h('p', {}, `${clock(a.createdMs)} · ${a.address}`),
    h('p', { class: 'state', 'data-role': 'state' }, t('state.' + a.state.toUpperCase())),
    h('p', { 'data-role': 'coming' }, a.takenBy ? t('fv.coming', { who: a.takenBy }) : t('fv.nobody')),
    a.position ? positionCard(h, t, a.position, a.track || []) : '',
    mine.length ? h('ol', { class: 'timeline' }, mine.map(m => h('li', {}, h('time', {}, clock(m.atMs)), `${m.name} · ${t('family.kind.' + m.kind)}`))) : '',
    open ? h('div', { class: 'actions fv-answers' },
      h('button', { class: 'act primary', 'data-answer': 'going', onclick: answer('going') }, t('fv.going')),
      h('button', { class: 'act', 'data-answer': 'fine', onclick: answer('fine') }, t('fv.fine')),
      h('button', { class: 'act', 'data-answer': 'call_me', onclick: answer('call_me') }, t('fv.callMe'))) : '');
}

function render() {
  const v = family.view;
  const open = v.alerts.filter(a => OPEN.includes(a.state));
  const checkin = v.checkinWindow
    ? (v.checkinToday ? `${v.checkinWindow} · ${v.checkinToday.outcome || ''}` : `${v.checkinWindow} · ${t('fv.checkinWaiting')}`)
    : t('fv.checkinNone');
  $('#view').replaceChildren(
    h('header', { class: 'fv-head' }, h('h1', {}, v.residentName), h('p', { class: 'muted' }, `${t('fv.title')} · ${v.name}`),
      h('button', { id: 'fv-lang', onclick: () => { setLang(lang() === 'en' ? 'zh-CN' : 'en'); render(); } }, '中文 / EN')),
    ...(open.length ? open.map(alertCard) : [h('p', { class: 'card', id: 'calm' }, t('fv.noAlert'))]),
    h('section', { class: 'card' }, h('h3', {}, t('fv.checkin')), h('p', { 'data-role': 'checkin' }, checkin)),
    h('section', { class: 'card' }, h('h3', {}, t('fv.visits')),
      v.visits.length ? h('ul', {}, v.visits.map(x => h('li', {}, `${new Date(num(x.day) * 86400000).toISOString().slice(0, 10)} · ${x.status || ''}`)))
        : h('p', { class: 'muted' }, t('fv.noVisits'))));
}

function merge(alert) {
  const list = family.view.alerts;
  const i = list.findIndex(a => a.id === alert.id);
  if (i >= 0) list[i] = alert; else list.unshift(alert);
  render();
}

function listen() {
  family.source?.close();
  const source = new EventSource(`/api/v1/family/stream?access_token=${encodeURIComponent(session())}`);
  source.addEventListener('alert', e => merge(JSON.parse(e.data)));
  source.addEventListener('resync', () => load());
  family.source = source;
}

async function load() {
  try {
    family.view = await api('GET', '/api/v1/family/view');
  } catch (e) {
    sessionStorage.removeItem('anxin-family');
    if (e.status === 401 || e.status === 403) {
      $('#view').replaceChildren(h('p', { class: 'card' }, t('fv.expired')));
      return;
    }
    toast(e.message);
    return;
  }
  if (!family.languageSet) {
    setLang(family.view.language || 'zh-CN');
    family.languageSet = true;
  }
  render();
  listen();
}

async function start() {
  const link = location.hash.replace(/^#/, '');
  if (link) {
    // The link is used once: take it out of the address bar and history.
    history.replaceState(null, '', location.pathname);
    const res = await fetch('/api/v1/family/session', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ link }),
    });
    const json = await res.json().catch(() => ({}));
    if (!res.ok) return badLink();
    sessionStorage.setItem('anxin-family', json.token);
  }
  if (!session()) return badLink();
  await load();
}
start();
