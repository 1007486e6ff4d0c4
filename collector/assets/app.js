'use strict';
/*
 * driftwatch collector dashboard: plain ES2020, no dependencies, no build step.
 *
 * SECURITY: host ids, hostnames, paths, package names and messages are
 * reported by hosts and may be hostile. Everything from the API reaches the
 * DOM through el()/svg() below, i.e. as text nodes and setAttribute values.
 * innerHTML is never used in this file; keep it that way.
 *
 * Structure: one "view" per route. page.setup() builds the static parts once
 * (filter boxes keep their focus and caret), page.render() rebuilds the data
 * regions from the last good response. Every REFRESH_MS the data is fetched
 * again. Sort and filter state lives in pageState, so it survives refreshes
 * and navigating away and back.
 */

const REFRESH_MS = 5000;
const API = 'api/v1/';   // relative to the page, like the asset URLs
const ROW_LIMIT = 1000;  // rows rendered before a "show all" button

// ---------------------------------------------------------------- DOM helpers

function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}
function svg(tag, attrs, ...children) {
  return build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);
}
// Attributes: class, dataset {..}, style {..} (CSSOM, so a strict CSP is fine),
// on<event> handlers, anything else via setAttribute. null/false are skipped.
function build(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') node.setAttribute('class', v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'style') Object.assign(node.style, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c != null && c !== false) node.append(c); // strings become text nodes
  }
  return node;
}
// replaceChildren() that skips null/false children (it would print "null").
const fill = (node, ...kids) => node.replaceChildren(...kids.flat(Infinity).filter((k) => k != null && k !== false));
const cls = (...names) => names.filter(Boolean).join(' ') || null;

// ----------------------------------------------------------------- formatting

const pad = (n) => String(n).padStart(2, '0');
const num = (n) => (Number.isFinite(n) ? n.toLocaleString('en-US') : '-');
const pct = (v) => (Number.isFinite(v) ? v.toFixed(3) : '-');

function localTime(d, seconds = true) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}` + (seconds ? `:${pad(d.getSeconds())}` : '');
}
function parseTime(s) {
  if (!s || s === '-') return null;
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? null : d;
}
const utcIso = (d) => d.toISOString().replace('.000Z', 'Z');

// A timestamp in the browser's local time, with the UTC ISO form in the title.
function timeEl(s) {
  const d = parseTime(s);
  if (!d) return el('span', { class: 'muted' }, s || '-');
  return el('time', { datetime: utcIso(d), title: utcIso(d) }, localTime(d));
}

// Compact duration: the two largest units, "3d 4h", "5m 12s", "45s".
function dur(secs) {
  if (!Number.isFinite(secs) || secs < 0) return 'unknown';
  const units = [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]];
  let s = Math.floor(secs);
  let i = units.findIndex(([, n]) => s >= n);
  if (i < 0) i = 3; // under a second
  const [u1, n1] = units[i];
  const a = Math.floor(s / n1);
  s -= a * n1;
  const next = units[i + 1];
  const b = next ? Math.floor(s / next[1]) : 0;
  return b ? `${a}${u1} ${b}${next[0]}` : `${a}${u1}`;
}
function ago(unix) {
  if (!unix) return 'never';
  const d = Date.now() / 1000 - unix;
  return d < 2 ? 'just now' : `${dur(d)} ago`;
}

// "0123456789ab…" with the full value in the title.
function hashEl(h, len = 12) {
  if (h == null || h === '') return el('span', { class: 'muted' }, '-');
  const s = String(h);
  return el('span', { class: 'mono hash', title: s }, s.length > len ? s.slice(0, len) + '…' : s);
}

// ------------------------------------------------------------ shared widgets

const SEVERITIES = ['high', 'medium', 'low'];
const SEVERE_REASONS = ['critical_change', 'returned', 'unknown_manifest'];
const KINDS = {
  added: 'added', removed: 'removed', modified: 'modified', metadata: 'metadata',
  package_added: 'pkg added', package_removed: 'pkg removed', package_changed: 'pkg changed',
};

const badge = (text, kind, title) => el('span', { class: `badge b-${kind}`, title }, text);

function sevBadge(sev) {
  const known = SEVERITIES.includes(sev);
  return badge(known ? sev : String(sev ?? '?'), known ? sev : 'retired');
}
const sevRank = (sev) => { const i = SEVERITIES.indexOf(sev); return i < 0 ? 9 : i; };

// [label, css kind, sort rank] of a host's replacement status.
function hostStatus(h) {
  if (h.status === 'retired' || h.queue_state === 'retired') return ['retired', 'retired', 4];
  if (h.queue_state === 'draining') return ['draining', 'draining', 1];
  if (h.flagged && !h.acknowledged) return ['FLAGGED', 'flagged', 0];
  if (h.flagged) return ['acked', 'acked', 2];
  return ['ok', 'ok', 3];
}
const statusBadge = (h) => { const [l, k] = hostStatus(h); return badge(l, k); };

function reasonTitle(r) {
  const d = parseTime(r.since);
  return [r.message || r.code, d ? `since ${localTime(d)} (${utcIso(d)})` : null,
    r.sticky ? 'sticky: does not clear by itself' : null].filter(Boolean).join('\n');
}
function reasonChips(reasons) {
  return (reasons || []).map((r) => el('span', {
    class: cls('chip', SEVERE_REASONS.includes(r.code) && 'chip-severe'), title: reasonTitle(r),
  }, r.code));
}

const hostHref = (id) => '#/hosts/' + encodeURIComponent(id);
const hostLink = (id, title) => el('a', { href: hostHref(id), class: 'mono', title }, id);

// Drift % with a small bar. The bar is logarithmic, so 0.1 % is visible and
// 100 % is full; it is red when the host has the drift_threshold reason.
function driftEl(h) {
  const v = Number(h.drift_pct) || 0;
  const w = Math.min(100, (Math.log10(1 + v * 10) / 3) * 100);
  const over = (h.reasons || []).some((r) => r.code === 'drift_threshold');
  return el('span', { class: 'drift' },
    el('span', { class: 'bar', title: 'log scale' }, el('span', { class: cls(over && 'over'), style: { width: `${w}%` } })),
    el('span', { class: cls('num', over && 'text-red') }, pct(h.drift_pct)));
}

function lastSeenEl(h) {
  const d = parseTime(h.last_seen);
  return el('span', { class: 'nowrap' },
    el('span', { title: d ? `${localTime(d)} (${utcIso(d)})` : null }, ago(h.last_seen_unix)),
    !h.connected && h.status !== 'retired' ? [' ', badge('offline', 'offline')] : null);
}

const empty = (msg, hint) => el('div', { class: 'empty' }, el('p', null, msg), hint ? el('p', null, el('code', null, hint)) : null);

function filterBox(st, placeholder, rerender) {
  return el('input', {
    type: 'search', class: 'filter', placeholder, value: st.filter, spellcheck: 'false',
    oninput: (e) => { st.filter = e.target.value; st.showAll = false; rerender(); },
  });
}
const matches = (q, ...fields) => !q || fields.join('\u0000').toLowerCase().includes(q);

// -------------------------------------------------------------- sortable table
// columns: [{key, label, cell(row) -> node|string, sort?(row) -> value, desc?
// (first click sorts descending), cls?}]; st holds {sort, desc}.

function sortRows(rows, cols, st) {
  const col = cols.find((c) => c.key === st.sort && c.sort);
  if (!col) return rows.slice();
  const dir = st.desc ? -1 : 1;
  const blank = (x) => x == null || x === '' || Number.isNaN(x);
  return rows.map((r, i) => [col.sort(r), i, r]).sort(([a, i], [b, j]) => {
    if (blank(a) || blank(b)) return blank(a) === blank(b) ? i - j : (blank(a) ? 1 : -1); // blanks last
    const c = typeof a === 'number' && typeof b === 'number'
      ? a - b : String(a).localeCompare(String(b), undefined, { numeric: true });
    return c * dir || i - j;
  }).map((x) => x[2]);
}

function dataTable(id, cols, rows, st, rerender, rowAttrs) {
  const head = cols.map((c) => {
    const on = c.sort && st.sort === c.key;
    return el('th', {
      class: cls(c.cls, c.sort && 'sortable', on && 'sorted'),
      'aria-sort': on ? (st.desc ? 'descending' : 'ascending') : null,
      onclick: c.sort ? () => {
        if (on) st.desc = !st.desc; else { st.sort = c.key; st.desc = !!c.desc; }
        rerender();
      } : null,
    }, c.label, c.sort ? el('span', { class: 'arrow' }, on ? (st.desc ? '▼' : '▲') : '↕') : null);
  });
  const body = rows.map((r) => el('tr', rowAttrs ? rowAttrs(r) : null,
    cols.map((c) => el('td', { class: c.cls }, c.cell(r)))));
  return el('table', { id, class: 'data' }, el('thead', null, el('tr', null, head)), el('tbody', null, body));
}

// The first ROW_LIMIT rows, and a note with a "show all" button if cut.
function limitRows(rows, st, rerender) {
  if (st.showAll || rows.length <= ROW_LIMIT) return [rows, null];
  return [rows.slice(0, ROW_LIMIT), el('div', { class: 'more' },
    `Showing the first ${num(ROW_LIMIT)} of ${num(rows.length)} rows. `,
    el('button', { onclick: () => { st.showAll = true; rerender(); } }, 'Show all'))];
}

// ------------------------------------------------------------ drift % chart
// Inline SVG, 1200×250 user units scaled to the panel's width.

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

function driftChart(history) {
  const W = 1200, H = 250, L = 56, R = 16, T = 12, B = 28;
  const chart = svg('svg', { id: 'drift-chart', class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'drift % over time' });
  const wrap = el('div', { class: 'chart-wrap' }, chart);
  const pts = (history || []).filter((p) => Number.isFinite(p.at_unix) && Number.isFinite(p.drift_pct));
  if (!pts.length) {
    chart.setAttribute('viewBox', `0 0 ${W} 60`);
    chart.append(svg('text', { x: W / 2, y: 34, class: 'chart-empty', 'text-anchor': 'middle' }, 'No history yet: the first scan will appear here.'));
    return wrap;
  }
  let t0 = pts[0].at_unix, t1 = pts[pts.length - 1].at_unix;
  if (t1 === t0) { t0 -= 1800; t1 += 1800; } // one point: centre it in an hour
  else if (t1 - t0 < 60) { const pad = (60 - (t1 - t0)) / 2; t0 -= pad; t1 += pad; } // a burst: a minute
  const step = niceStep(Math.max(...pts.map((p) => p.drift_pct), 0.01) / 4);
  const vmax = Math.max(step, Math.ceil((Math.max(...pts.map((p) => p.drift_pct)) * 1.05) / step) * step);
  const dec = Math.max(0, -Math.floor(Math.log10(step)));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / vmax) * (H - T - B);

  for (let v = 0; v <= vmax + step / 2; v += step) { // y grid and labels
    chart.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      svg('text', { class: 'tick', x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, `${v.toFixed(dec)}%`));
  }
  const long = t1 - t0 > 86400;
  for (let i = 0; i <= 4; i++) { // five time labels
    const t = t0 + ((t1 - t0) * i) / 4;
    const s = localTime(new Date(t * 1000), t1 - t0 < 600); // seconds on short spans
    chart.append(svg('text', { class: 'tick', x: x(t), y: H - 8, 'text-anchor': ['start', 'middle', 'middle', 'middle', 'end'][i] },
      long ? s.slice(5) : s.slice(11)));
  }
  chart.append(svg('line', { class: 'axis', x1: L, x2: W - R, y1: y(0), y2: y(0) }));
  chart.append(svg('path', { class: 'line', d: pts.map((p, i) => `${i ? 'L' : 'M'}${x(p.at_unix).toFixed(1)},${y(p.drift_pct).toFixed(1)}`).join('') }));
  if (pts.length <= 120) pts.forEach((p) => chart.append(svg('circle', { class: 'pt', cx: x(p.at_unix), cy: y(p.drift_pct), r: 3 })));

  // Hover: a guide line, a marker on the nearest point and an HTML tooltip.
  const guide = svg('line', { class: 'guide', y1: T, y2: H - B, visibility: 'hidden' });
  const mark = svg('circle', { class: 'mark', r: 5, visibility: 'hidden' });
  const tip = el('div', { class: 'tip', hidden: true });
  chart.append(guide, mark);
  wrap.append(tip);
  chart.addEventListener('mousemove', (e) => {
    const box = chart.getBoundingClientRect();
    const ux = ((e.clientX - box.left) / box.width) * W;
    let best = pts[0];
    for (const p of pts) if (Math.abs(x(p.at_unix) - ux) < Math.abs(x(best.at_unix) - ux)) best = p;
    const px = x(best.at_unix), py = y(best.drift_pct);
    for (const [k, v] of [['x1', px], ['x2', px]]) guide.setAttribute(k, v);
    mark.setAttribute('cx', px); mark.setAttribute('cy', py);
    guide.setAttribute('visibility', 'visible'); mark.setAttribute('visibility', 'visible');
    const d = new Date(best.at_unix * 1000);
    fill(tip, el('b', null, `${pct(best.drift_pct)} %`), el('br'), localTime(d),
      Number.isFinite(best.observed_items) ? [el('br'), `${num(best.deviating_items)} of ${num(best.observed_items)} items`] : null);
    tip.hidden = false;
    tip.style.left = `${(px / W) * box.width}px`;
    tip.style.top = `${(py / H) * box.height}px`;
    tip.classList.toggle('left', px > W * 0.75);
  });
  chart.addEventListener('mouseleave', () => {
    tip.hidden = true;
    guide.setAttribute('visibility', 'hidden'); mark.setAttribute('visibility', 'hidden');
  });
  return wrap;
}

// ------------------------------------------------------ deviation "expected → actual"

const FIELDS = ['type', 'mode', 'uid', 'gid', 'size', 'mtime', 'blake3', 'symlink_target',
  'device', 'capability', 'hardlinked_with', 'version'];

function fieldVal(f, v) {
  if (v == null || v === '') return el('span', { class: 'muted' }, '∅');
  if (f === 'blake3') return hashEl(v);
  if (f === 'size' && Number.isFinite(v)) return el('span', { class: 'mono' }, num(v));
  return el('span', { class: 'mono' }, typeof v === 'object' ? JSON.stringify(v) : String(v));
}
// All set fields of one side, for an added or removed item.
const sideFields = (o) => FIELDS.filter((f) => o[f] != null && o[f] !== '')
  .map((f) => el('span', { class: 'fv' }, el('span', { class: 'fname' }, f), ' ', fieldVal(f, o[f])));

function changeEl(d) {
  const e = d.expected, a = d.actual;
  if (!e && !a) return el('span', { class: 'muted' }, '-');
  if (!e) return el('div', { class: 'change' }, el('span', { class: 'muted' }, 'absent → '), sideFields(a));
  if (!a) return el('div', { class: 'change' }, sideFields(e), el('span', { class: 'muted' }, ' → absent'));
  const lines = FIELDS.filter((f) => JSON.stringify(e[f] ?? null) !== JSON.stringify(a[f] ?? null))
    .map((f) => el('div', { class: 'fv' }, el('span', { class: 'fname' }, f), ' ', fieldVal(f, e[f]),
      el('span', { class: 'to' }, ' → '), fieldVal(f, a[f])));
  return lines.length ? el('div', { class: 'change' }, lines) : el('span', { class: 'muted' }, 'no field differs');
}

function itemEl(d) { // a deviation's or finding's path or package
  if (d.path != null) return el('span', { class: 'mono path' }, d.path);
  return el('span', null, el('span', { class: 'mono path' }, d.package ?? '?'),
    d.manager || d.architecture ? el('span', { class: 'muted' }, ` ${[d.manager, d.architecture].filter(Boolean).join(' ')}`) : null);
}
const itemData = (d) => (d.path != null ? { path: String(d.path) } : { package: String(d.package ?? '') });

// ---------------------------------------------------------------------- pages

const PAGES = {};

PAGES.fleet = {
  title: 'Fleet',
  url: () => 'hosts',
  state: () => ({ filter: '', quick: 'all', sort: 'status', desc: false, showAll: false }),
  setup(v) {
    const quick = ['all', 'flagged', 'draining', 'offline'].map((q) => el('button', {
      class: cls(v.st.quick === q && 'on'), dataset: { quick: q },
      onclick: () => {
        v.st.quick = q;
        quick.forEach((b) => b.classList.toggle('on', b.dataset.quick === q));
        v.rerender();
      },
    }, q));
    v.count = el('span', { class: 'count' });
    v.body = el('div', null, el('p', { class: 'loading' }, 'Loading…'));
    v.root.append(el('div', { class: 'toolbar' }, el('h1', null, 'Fleet'),
      filterBox(v.st, 'filter: host, image, reason…', v.rerender),
      el('span', { class: 'seg' }, quick), v.count), v.body);
  },
  render(v, hosts) {
    const st = v.st, q = st.filter.trim().toLowerCase();
    const quick = {
      all: () => true,
      flagged: (h) => h.flagged && h.status !== 'retired',
      draining: (h) => h.queue_state === 'draining',
      offline: (h) => !h.connected && h.status !== 'retired',
    }[st.quick] || (() => true);
    const rows = hosts.filter((h) => quick(h) && matches(q, h.host_id, h.hostname, h.image_id, h.image_version,
      ...(h.reasons || []).map((r) => `${r.code} ${r.message}`)));
    v.count.textContent = `${num(rows.length)} of ${num(hosts.length)} hosts`;
    if (!hosts.length) {
      return fill(v.body, empty('No hosts yet: start an agent.',
        'driftwatch-agent run --collector URL --root / --manifest FILE'));
    }
    if (!rows.length) return fill(v.body, empty('No hosts match the filter.'));
    const cols = [
      { key: 'host', label: 'Host', sort: (h) => h.host_id, cell: (h) => hostLink(h.host_id, h.hostname) },
      { key: 'image', label: 'Image', cls: 'nowrap', sort: (h) => `${h.image_id} ${h.image_version}`,
        cell: (h) => [h.image_id, ' ', el('span', { class: 'muted' }, h.image_version)] },
      { key: 'drift', label: 'Drift %', cls: 'r', desc: true, sort: (h) => h.drift_pct, cell: driftEl },
      { key: 'devs', label: 'Deviations', cls: 'r', desc: true, sort: (h) => h.deviation_count, cell: (h) => num(h.deviation_count) },
      { key: 'age', label: 'Age', cls: 'r', desc: true, sort: (h) => h.instance_age_secs, cell: (h) => dur(h.instance_age_secs) },
      { key: 'seen', label: 'Last seen', desc: true, sort: (h) => h.last_seen_unix, cell: lastSeenEl },
      { key: 'status', label: 'Status', sort: (h) => hostStatus(h)[2] * 1e6 - (h.priority || 0), cell: statusBadge },
      { key: 'reasons', label: 'Reasons', desc: true, sort: (h) => (h.reasons || []).length, cell: (h) => reasonChips(h.reasons) },
    ];
    const [shown, more] = limitRows(sortRows(rows, cols, st), st, v.rerender);
    fill(v.body, dataTable('hosts-table', cols, shown, st, v.rerender,
      (h) => ({ dataset: { hostId: String(h.host_id) }, class: cls(h.status === 'retired' && 'dim') })), more);
  },
};

PAGES.host = {
  title: 'Host',
  url: (v) => 'hosts/' + encodeURIComponent(v.arg),
  state: () => ({ filter: '', sort: null, desc: false, showAll: false }),
  setup(v) {
    v.head = el('div', null, el('p', { class: 'loading' }, 'Loading…'));
    v.chart = el('section', { class: 'panel' });
    v.count = el('span', { class: 'count' });
    v.body = el('div');
    v.devs = el('section', { hidden: true }, el('div', { class: 'toolbar' }, el('h2', null, 'Deviations'),
      filterBox(v.st, 'filter: path, package, kind, severity…', v.rerender), v.count), v.body);
    v.root.append(el('div', { class: 'crumbs' }, el('a', { href: '#/' }, 'Fleet'), ' / ', v.arg), v.head, v.chart, v.devs);
  },
  render(v, h) {
    document.title = `${h.host_id} · driftwatch`;
    const item = (k, ...val) => el('div', { class: 'kv' }, el('dt', null, k), el('dd', null, val));
    const notVerified = h.not_verified > 0 ? el('span', { class: 'muted' }, ` (${num(h.not_verified)} not verified)`) : null;
    const reasons = h.reasons || [];
    fill(v.head,
      el('div', { class: 'host-title' }, el('h1', { class: 'mono' }, h.host_id), statusBadge(h),
        !h.connected && h.status !== 'retired' ? badge('offline', 'offline') : null,
        h.hostname && h.hostname !== h.host_id ? el('span', { class: 'muted' }, h.hostname) : null),
      h.dropped_reports > 0 ? el('div', { class: 'warn' }, `⚠ The agent's spool overflowed: ${num(h.dropped_reports)} reports were dropped. ` +
        'Its next snapshot re-synchronised the deviation set, but history has a gap.') : null,
      el('dl', { class: 'facts panel' },
        item('Image', h.image_id, ' ', el('span', { class: 'muted' }, h.image_version)),
        item('Drift', driftEl(h), ' %'),
        item('Deviations', num(h.deviation_count), notVerified),
        item('Instance age', dur(h.instance_age_secs)),
        item('Image age', h.image_age_secs < 0 ? el('span', { class: 'muted' }, 'unknown') : dur(h.image_age_secs)),
        item('Last seen', lastSeenEl(h)),
        item('First seen', timeEl(h.first_seen)),
        item('Last scan', timeEl(h.last_scan)),
        item('Boot time', timeEl(h.boot_time)),
        item('Agent', el('span', { class: 'mono' }, h.agent_version || '-')),
        item('Manifest', hashEl(h.manifest_digest, 16)),
        item('Queue', h.queue_state || 'none', h.priority ? el('span', { class: 'muted' }, ` (priority ${h.priority})`) : null)),
      el('section', { class: 'panel reasons' }, el('h2', null, 'Replacement reasons',
        h.flagged && h.acknowledged ? [' ', badge('acknowledged', 'acked')] : null),
      reasons.length ? el('ul', null, reasons.map((r) => el('li', null, reasonChips([r]), ' ', r.message,
        el('span', { class: 'muted' }, ' since ', timeEl(r.since), r.sticky ? ' · sticky' : ''))))
        : el('p', { class: 'muted' }, 'None: the host is within policy.')));

    // The chart is rebuilt only when the history changes, so a hover survives refreshes.
    const key = JSON.stringify(h.history || []);
    if (key !== v.chartKey) {
      v.chartKey = key;
      fill(v.chart, el('h2', null, 'Drift % over time'), driftChart(h.history));
    }

    const st = v.st, q = st.filter.trim().toLowerCase();
    const all = h.deviations || [];
    const rows = all.filter((d) => matches(q, d.path ?? '', d.package ?? '', d.manager ?? '', d.kind, KINDS[d.kind] || '',
      d.severity, d.critical ? 'critical' : ''));
    v.devs.hidden = false;
    v.count.textContent = (q ? `${num(rows.length)} match · ` : '') + (all.length < h.deviation_count
      ? `showing ${num(all.length)} of ${num(h.deviation_count)} deviations (the most important first)`
      : `${num(all.length)} deviations`);
    if (!all.length) return fill(v.body, empty('No deviations: this host matches its image.'));
    if (!rows.length) return fill(v.body, empty('No deviations match the filter.'));
    const cols = [
      { key: 'sev', label: 'Severity', sort: (d) => sevRank(d.severity) * 2 + (d.critical ? 0 : 1), cell: (d) => sevBadge(d.severity) },
      { key: 'kind', label: 'Kind', cls: 'nowrap', sort: (d) => d.kind, cell: (d) => KINDS[d.kind] || String(d.kind) },
      { key: 'path', label: 'Path / package', sort: (d) => d.path ?? d.package,
        cell: (d) => [itemEl(d), d.critical ? [' ', badge('critical', 'flagged', 'under a critical path, or a setuid/setgid/capability change')] : null] },
      { key: 'change', label: 'Expected → actual', cell: changeEl },
      { key: 'first', label: 'First seen', desc: true, sort: (d) => Date.parse(d.first_seen), cell: (d) => timeEl(d.first_seen) },
      { key: 'changed', label: 'Last changed', desc: true, sort: (d) => Date.parse(d.last_changed), cell: (d) => timeEl(d.last_changed) },
    ];
    const [shown, more] = limitRows(sortRows(rows, cols, st), st, v.rerender);
    fill(v.body, dataTable('deviations-table', cols, shown, st, v.rerender,
      (d) => ({ dataset: itemData(d), class: cls(d.critical && 'crit') })), more);
  },
};

PAGES.images = {
  title: 'Images',
  url: () => 'images',
  state: () => ({}),
  setup(v) {
    v.body = el('div', null, el('p', { class: 'loading' }, 'Loading…'));
    v.root.append(el('div', { class: 'toolbar' }, el('h1', null, 'Images')), v.body);
  },
  render(v, images) {
    if (!images.length) {
      return fill(v.body, empty('No images registered.', 'driftwatch-collector images register MANIFEST'));
    }
    // Grouped by image id, newest build first within a group.
    const rows = images.slice().sort((a, b) => String(a.image_id).localeCompare(String(b.image_id))
      || (b.build_time_unix || 0) - (a.build_time_unix || 0));
    const head = ['Version', 'Digest', 'Commit', 'Built', 'Entries', 'Files', 'Packages', 'Hosts', 'Registered', '']
      .map((t, i) => el('th', { class: cls(i >= 4 && i <= 7 && 'r') }, t));
    const body = [];
    let group = null;
    for (const im of rows) {
      if (im.image_id !== group) {
        group = im.image_id;
        body.push(el('tr', { class: 'group' }, el('td', { colspan: head.length }, im.image_id)));
      }
      const registered = typeof im.registered === 'string' ? timeEl(im.registered) : (im.registered ? 'yes' : 'no');
      body.push(el('tr', { dataset: { digest: String(im.manifest_digest) }, class: cls(im.superseded_by && 'dim') },
        el('td', { class: 'mono' }, im.image_version),
        el('td', null, hashEl(im.manifest_digest, 16)),
        el('td', null, hashEl(im.source_commit, 10)),
        el('td', { class: 'nowrap' }, timeEl(im.build_time), el('span', { class: 'muted' },
          im.image_age_secs >= 0 ? ` (${dur(im.image_age_secs)})` : '')),
        el('td', { class: 'r' }, num(im.entries)), el('td', { class: 'r' }, num(im.files)),
        el('td', { class: 'r' }, num(im.packages)),
        el('td', { class: cls('r', !im.hosts && 'muted') }, num(im.hosts)),
        el('td', null, registered),
        el('td', null, im.superseded_by != null ? badge(`superseded by ${im.superseded_by}`, 'retired') : badge('latest', 'ok'))));
    }
    fill(v.body, el('table', { id: 'images-table', class: 'data' },
      el('thead', null, el('tr', null, head)), el('tbody', null, body)));
  },
};

PAGES.queue = {
  title: 'Replacement queue',
  url: () => 'queue',
  state: () => ({ sort: null, desc: false }),
  setup(v) {
    v.budget = el('span', { class: 'budget' });
    v.body = el('div', null, el('p', { class: 'loading' }, 'Loading…'));
    v.root.append(el('div', { class: 'toolbar' }, el('h1', null, 'Replacement queue'), v.budget), v.body);
  },
  render(v, q) {
    const b = q.budget || {}, now = b.draining_now ?? 0;
    // "2 of max 3 draining, max 10% of the fleet"
    const full = b.max_draining != null && now >= b.max_draining;
    fill(v.budget, el('b', null, num(now)), b.max_draining != null ? [' of max ', el('b', null, num(b.max_draining))] : null,
      ' draining', b.max_draining_pct != null ? `, max ${b.max_draining_pct}% of the fleet` : null,
      b.max_draining == null && b.max_draining_pct == null ? ' (no drain budget configured)' : null,
      full ? [' ', badge('budget full: replacements wait', 'acked')] : null);
    const hosts = q.hosts || [];
    if (!hosts.length) return fill(v.body, empty('Nothing to replace: no host is flagged.'));
    const cols = [
      { key: 'prio', label: 'Priority', cls: 'r', desc: true, sort: (h) => h.priority, cell: (h) => num(h.priority) },
      { key: 'host', label: 'Host', sort: (h) => h.host_id, cell: (h) => hostLink(h.host_id) },
      { key: 'image', label: 'Image', cls: 'nowrap', sort: (h) => `${h.image_id} ${h.image_version}`,
        cell: (h) => [h.image_id, ' ', el('span', { class: 'muted' }, h.image_version)] },
      { key: 'state', label: 'State', sort: (h) => h.state, cell: (h) => [
        badge(h.state, h.state === 'draining' ? 'draining' : 'flagged'),
        h.held_back ? el('div', { class: 'held-note' }, badge('held back', 'acked'), ' ', h.held_reason || 'no reason given') : null] },
      { key: 'reasons', label: 'Reasons', cell: (h) => reasonChips(h.reasons) },
      { key: 'drift', label: 'Drift %', cls: 'r', desc: true, sort: (h) => h.drift_pct, cell: driftEl },
      { key: 'age', label: 'Age', cls: 'r', desc: true, sort: (h) => h.instance_age_secs, cell: (h) => dur(h.instance_age_secs) },
      { key: 'since', label: 'Since', sort: (h) => Date.parse(h.since), cell: (h) => timeEl(h.since) },
    ];
    fill(v.body, dataTable('queue-table', cols, sortRows(hosts, cols, v.st), v.st, v.rerender,
      (h) => ({ dataset: { hostId: String(h.host_id) }, class: cls(h.held_back && 'held') })));
  },
};

PAGES.findings = {
  title: 'Findings',
  url: () => 'findings',
  state: () => ({ filter: '', sort: null, desc: false, showAll: false }),
  setup(v) {
    v.count = el('span', { class: 'count' });
    v.body = el('div', null, el('p', { class: 'loading' }, 'Loading…'));
    v.root.append(el('div', { class: 'toolbar' }, el('h1', null, 'Fleet-wide findings'),
      filterBox(v.st, 'filter: path, package, host…', v.rerender), v.count),
    el('p', { class: 'muted intro' }, 'The same deviation on several hosts: typically a hand-applied hot-fix that belongs in the image.'),
    v.body);
  },
  render(v, findings) {
    const st = v.st, q = st.filter.trim().toLowerCase();
    const rows = findings.filter((f) => matches(q, f.path ?? '', f.package ?? '', f.kind, f.severity, ...(f.hosts || [])));
    v.count.textContent = `${num(rows.length)} of ${num(findings.length)} findings`;
    if (!findings.length) return fill(v.body, empty('No fleet-wide findings: no deviation is shared by several hosts.'));
    if (!rows.length) return fill(v.body, empty('No findings match the filter.'));
    const cols = [
      { key: 'sev', label: 'Severity', sort: (f) => sevRank(f.severity), cell: (f) => sevBadge(f.severity) },
      { key: 'kind', label: 'Kind', cls: 'nowrap', sort: (f) => f.kind, cell: (f) => KINDS[f.kind] || String(f.kind) },
      { key: 'path', label: 'Path / package', sort: (f) => f.path ?? f.package, cell: itemEl },
      { key: 'count', label: 'Count', cls: 'r', desc: true, sort: (f) => f.host_count, cell: (f) => num(f.host_count) },
      { key: 'hosts', label: 'Affected hosts', cell: (f) => {
        const hs = f.hosts || [], rest = Math.max(hs.length, f.host_count || 0) - Math.min(hs.length, 5);
        return el('span', { class: 'hostlist' }, hs.slice(0, 5).map((id) => hostLink(id)),
          rest > 0 ? el('span', { class: 'muted nowrap', title: hs.slice(5).join('\n') || null }, `+${num(rest)} more`) : null);
      } },
      { key: 'hash', label: 'Actual blake3', cell: (f) => hashEl(f.actual_blake3) },
      { key: 'first', label: 'First seen', desc: true, sort: (f) => Date.parse(f.first_seen), cell: (f) => timeEl(f.first_seen) },
    ];
    const [shown, more] = limitRows(sortRows(rows, cols, st), st, v.rerender);
    fill(v.body, dataTable('findings-table', cols, shown, st, v.rerender, (f) => ({ dataset: itemData(f) })), more);
  },
};

// ------------------------------------------------------------ fetch & refresh

async function getJSON(url) {
  let res;
  try {
    res = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store' });
  } catch (e) {
    throw new Error(`collector unreachable (${e.message})`);
  }
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = undefined; }
  if (!res.ok) {
    throw new Error(body && typeof body.error === 'string' ? body.error : `${url}: HTTP ${res.status} ${res.statusText}`);
  }
  if (body === undefined) throw new Error(`${url}: the response is not JSON`);
  return { body, text };
}

const $ = (id) => document.getElementById(id);

function showError(msg, haveData) {
  const b = $('error');
  b.hidden = !msg;
  if (msg) {
    fill(b, el('strong', null, 'Error: '), msg, el('span', { class: 'muted' },
      ` (at ${localTime(new Date())}; retrying every ${REFRESH_MS / 1000} s${haveData ? ', showing the last good data' : ''})`));
  }
}

function updateCounts(hosts) {
  if (!Array.isArray(hosts)) return;
  const active = hosts.filter((h) => h.status !== 'retired');
  const set = (id, n) => { $(id).firstChild.textContent = num(n); $(id).classList.toggle('zero', !n); };
  set('n-hosts', active.length);
  set('n-flagged', active.filter((h) => h.flagged).length);
  set('n-draining', active.filter((h) => h.queue_state === 'draining').length);
  $('n-hosts').title = `${active.length} active, ${hosts.length - active.length} retired`;
}

const pageState = {};
let view = null;

function renderView(v) {
  if (v.data == null) return;
  const y = window.scrollY;
  try {
    v.page.render(v, v.data);
  } catch (e) {
    console.error(e);
    v.text = null; // render again on the next refresh, even if the data is the same
    showError(`cannot display the response: ${e.message}`, true);
  }
  if (window.scrollY !== y) window.scrollTo(0, y);
}

async function refresh() {
  const v = view;
  if (!v || v.busy) return;
  // Don't destroy a selection the user is making (e.g. copying a path).
  const sel = window.getSelection();
  if (v.data != null && sel && !sel.isCollapsed && $('main').contains(sel.anchorNode)) return;
  v.busy = true;
  const url = API + v.page.url(v);
  const [page, hosts] = await Promise.allSettled([getJSON(url),
    url === API + 'hosts' ? null : getJSON(API + 'hosts')]); // the nav counts
  v.busy = false;
  if (view !== v) return; // navigated away meanwhile
  const hostList = hosts.value ? hosts.value.body : page.value && page.value.body;
  if (page.status === 'fulfilled' || hosts.status === 'fulfilled') updateCounts(hostList);
  const failed = [page, hosts].filter((r) => r.status === 'rejected').map((r) => r.reason.message);
  showError(failed[0], v.data != null || page.status === 'fulfilled');
  if (page.status === 'fulfilled') {
    $('updated').textContent = `updated ${localTime(new Date()).slice(11)}`;
    $('updated').classList.remove('stale');
    if (page.value.text !== v.text) {
      v.data = page.value.body;
      v.text = page.value.text;
      renderView(v);
    }
  } else {
    $('updated').classList.add('stale');
    if (v.data == null) v.root.querySelectorAll('.loading').forEach((n) => { n.textContent = 'No data: see the error above.'; });
  }
}

function route() {
  const h = location.hash.replace(/^#\/?/, '');
  if (h.startsWith('hosts/') && h.length > 6) {
    let id = h.slice(6);
    try { id = decodeURIComponent(id); } catch (_) { /* keep it raw */ }
    return ['host', id];
  }
  return [['images', 'queue', 'findings'].includes(h) ? h : 'fleet', null];
}

function startView() {
  const [name, arg] = route();
  const page = PAGES[name];
  const key = arg == null ? name : `${name}:${arg}`;
  const v = { name, arg, page, st: pageState[key] || (pageState[key] = page.state()),
    root: el('div', { class: `page page-${name}` }), data: null, text: null, busy: false };
  v.rerender = () => renderView(v);
  view = v;
  document.title = `${page.title} · driftwatch`;
  page.setup(v);
  $('main').replaceChildren(v.root);
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === (name === 'host' ? 'fleet' : name)));
  window.scrollTo(0, 0);
  refresh();
}

window.addEventListener('hashchange', startView);
document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
startView();
