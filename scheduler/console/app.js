// The Squilla web console: a client of the master's public API, signed in by a session cookie
// (HttpOnly, SameSite=Strict; see docs/observability.md#the-web-console). No framework and no
// build step: pages are made with the DOM API (text is always set as text, never as HTML),
// streams are read with fetch so that errors keep their JSON body.
'use strict';

const HISTORY_POINTS = 120;
const TAIL_LINES = 200;
const LOG_LINES = 500;

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { 'X-Squilla-Console': '1' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith('/console/session')) signedOut();
    throw new ApiError(response.status, json && json.code || 'error', json && json.message || response.statusText);
  }
  return json;
}

// A server-sent-events stream read with fetch: `onEvent(name, data)` per event; `onError(err)`
// once if the stream cannot open (with the API's error) or breaks. Returns a closer.
function stream(path, onEvent, onError) {
  const abort = new AbortController();
  (async () => {
    const response = await fetch(path, { credentials: 'same-origin', signal: abort.signal });
    if (!response.ok) {
      let json = {};
      try { json = await response.json(); } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, json.code || 'error', json.message || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = 'message';
        const data = [];
        for (const line of frame.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'event') name = val;
          else if (field === 'data') data.push(val);
        }
        if (data.length) onEvent(name, data.join('\n'));
      }
    }
  })().catch((err) => { if (!abort.signal.aborted && onError) onError(err); });
  return () => abort.abort();
}

function age(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm';
  if (s < 86400) return Math.floor(s / 3600) + 'h';
  return Math.floor(s / 86400) + 'd';
}

function rate(x) {
  if (!(x > 0)) return '0';
  if (x < 100) return x.toFixed(1);
  if (x < 10000) return x.toFixed(0);
  if (x < 1e6) return (x / 1e3).toFixed(1) + 'k';
  return (x / 1e6).toFixed(2) + 'M';
}

function bytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1048576) return Math.round(n / 1024) + ' KiB';
  return (n / 1048576).toFixed(1) + ' MiB';
}

const state = (s) => h('span', { class: 'state state-' + s }, s);
const ENDED = ['completed', 'failed', 'killed'];

function errorText(err) {
  return err instanceof ApiError ? `${err.code}: ${err.message}` : String(err && err.message || err);
}

// ---------------------------------------------------------------- charts

// A line chart on a canvas: series of numbers, newest last, drawn to the same scale.
class Chart {
  constructor(title, id) {
    this.series = new Map();
    this.canvas = h('canvas', { id, width: 320, height: 150, role: 'img', 'aria-label': title, 'data-points': 0 });
    this.legend = h('div', { class: 'legend' });
    this.readout = h('output', { id: id + '-now', 'aria-live': 'off' }, '–');
    this.el = h('figure', { class: 'chart' }, h('figcaption', {}, title, ' — now ', this.readout), this.canvas, this.legend);
  }

  push(name, value) {
    if (!this.series.has(name)) {
      const colors = ['#0b62d6', '#1f8f4e', '#b26a00', '#8e44ad', '#c0392b', '#16a085'];
      this.series.set(name, { color: colors[this.series.size % colors.length], points: [] });
      this.legend.replaceChildren(...[...this.series].map(([n, s]) => h('span', {}, h('i', {}), n)));
      [...this.legend.querySelectorAll('i')].forEach((i, k) => { i.style.background = [...this.series.values()][k].color; });
    }
    const s = this.series.get(name);
    s.points.push(Number.isFinite(value) ? value : 0);
    if (s.points.length > HISTORY_POINTS) s.points.shift();
  }

  draw(readout) {
    // Drawn at the canvas's displayed size, in device pixels, so that text stays legible.
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(200, this.canvas.clientWidth || 320);
    const height = 150;
    if (this.canvas.width !== Math.round(width * dpr)) {
      this.canvas.width = Math.round(width * dpr);
      this.canvas.height = Math.round(height * dpr);
    }
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    let max = 0;
    for (const s of this.series.values()) for (const p of s.points) max = Math.max(max, p);
    max = max > 0 ? max * 1.1 : 1;
    ctx.strokeStyle = '#d9dee7';
    ctx.fillStyle = '#5b6475';
    ctx.font = '12px system-ui';
    for (let i = 0; i <= 4; i++) {
      const y = height - 18 - (i * (height - 28)) / 4;
      ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(width, y); ctx.stroke();
      ctx.fillText(rate((max * i) / 4), 2, y + 4);
    }
    let points = 0;
    for (const s of this.series.values()) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 2; ctx.beginPath();
      s.points.forEach((p, i) => {
        const x = 40 + ((width - 44) * (i + HISTORY_POINTS - s.points.length)) / (HISTORY_POINTS - 1);
        const y = height - 18 - (p / max) * (height - 28);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      points = Math.max(points, s.points.length);
    }
    this.canvas.dataset.points = points;
    this.readout.textContent = readout;
  }
}

// ---------------------------------------------------------------- pages

let cleanup = [];
function onLeave(f) { cleanup.push(f); }
function main(...children) {
  const m = document.getElementById('main');
  m.replaceChildren(...children);
  return m;
}

function signinPage(message) {
  const token = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, size: 40 });
  const error = h('p', { id: 'signin-error', class: 'error', role: 'alert' }, message || '');
  const form = h('form', { id: 'signin', class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = '';
    try {
      await api('POST', '/console/session', { token: token.value });
      token.value = '';
      await start('#/jobs');
    } catch (err) {
      error.textContent = err.status === 401 ? 'That token is not valid.' : errorText(err);
    }
  } },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'Sign in with your tenant token. It is sent once; the console then keeps a session cookie.'),
  h('div', { class: 'row' }, h('label', { for: 'token' }, 'Tenant token'), token, h('button', { type: 'submit', id: 'signin-submit' }, 'Sign in')),
  error);
  main(form);
  token.focus();
}

async function jobsPage() {
  const body = h('tbody', { id: 'jobs-body' });
  const table = h('table', { id: 'jobs' },
    h('caption', { class: 'muted' }, 'Your jobs, newest first; refreshed every 2 s'),
    h('thead', {}, h('tr', {}, ['Job', 'Cluster', 'State', 'Workers', 'Age', 'Events/s in'].map((t, i) =>
      h('th', { scope: 'col', class: i >= 3 ? 'num' : '' }, t)))),
    body);
  const error = h('p', { class: 'error', role: 'alert' });
  main(h('h1', {}, 'Jobs'), error, table);
  const refresh = async () => {
    try {
      const jobs = (await api('GET', '/api/v1/jobs')).reverse();
      const live = jobs.filter((j) => !ENDED.includes(j.state)).slice(0, 50);
      const rates = new Map(await Promise.all(live.map(async (j) => {
        try { return [j.id, (await api('GET', `/api/v1/jobs/${encodeURIComponent(j.id)}/metrics`)).stages[0].rates['10s']['events-in']]; }
        catch (_) { return [j.id, null]; }
      })));
      body.replaceChildren(...jobs.map((j) => {
        const workers = j.stages.flatMap((s) => s.workers);
        const running = workers.filter((w) => w.state === 'running').length;
        return h('tr', {},
          h('td', {}, h('a', { href: '#/jobs/' + encodeURIComponent(j.id) }, j.id)),
          h('td', {}, `${j.cluster} v${j.version}`),
          h('td', {}, state(j.state)),
          h('td', { class: 'num' }, `${running}/${workers.length}`),
          h('td', { class: 'num' }, age(Date.now() - j.submitted_at_ms)),
          h('td', { class: 'num' }, rates.has(j.id) && rates.get(j.id) !== null ? rate(rates.get(j.id)) : '–'));
      }));
      if (!jobs.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 6 }, 'No jobs yet: submit one from Clusters.')));
      error.textContent = '';
    } catch (err) { error.textContent = errorText(err); }
  };
  await refresh();
  const timer = setInterval(refresh, 2000);
  onLeave(() => clearInterval(timer));
}

async function jobPage(id) {
  const path = encodeURIComponent(id);
  const title = h('h1', {}, 'Job ', id, ' ');
  const stateEl = h('span', { id: 'job-state' });
  title.append(stateEl);
  const error = h('p', { class: 'error', role: 'alert', id: 'job-error' });
  const summary = h('p', { class: 'muted', id: 'job-summary' });
  const kill = h('button', { type: 'button', id: 'kill', class: 'danger' }, 'Kill job');
  let armed = false;
  kill.addEventListener('click', async () => {
    if (!armed) { armed = true; kill.textContent = 'Confirm kill'; return; }
    try { await api('POST', `/api/v1/jobs/${path}/kill`); } catch (err) { error.textContent = errorText(err); }
  });
  const charts = {
    in: new Chart('Events in per second, by stage', 'chart-in'),
    out: new Chart('Events out per second, by stage', 'chart-out'),
    drops: new Chart('Batches dropped per second, by stage', 'chart-drops'),
    call: new Chart('Mean call time (µs), by stage', 'chart-call'),
  };
  const stages = h('div', { id: 'stages' });
  const scaleForms = h('div', { id: 'scale' });
  const history = h('ol', { id: 'history' });
  const logTitle = h('h2', { id: 'log-title' }, 'Worker log');
  const log = h('pre', { class: 'log', id: 'log', tabindex: 0, 'aria-label': 'Worker log' }, 'Choose a worker’s “Log” above.');
  const query = h('input', { id: 'query', type: 'text', class: 'query', placeholder: 'SELECT * WHERE …', 'aria-describedby': 'tail-help' });
  const tailButton = h('button', { type: 'submit', id: 'tail-start' }, 'Start tail');
  const tailError = h('div', { id: 'tail-error', role: 'alert' });
  const tail = h('pre', { class: 'tail', id: 'tail', tabindex: 0, 'aria-label': 'Sink output' });
  const tailForm = h('form', { id: 'tail-form', class: 'row' }, h('label', { for: 'query' }, 'Query'), query, tailButton);
  main(title, summary, error, h('div', { class: 'row' }, kill),
    h('h2', {}, 'Live'), h('div', { class: 'charts' }, Object.values(charts).map((c) => c.el)),
    h('h2', {}, 'Stages and workers'), scaleForms, stages,
    logTitle, log,
    h('h2', {}, 'Sink'), h('p', { class: 'muted', id: 'tail-help' }, 'Follow the job’s output, optionally through a query (the same SQL as the API). Leave empty for every event.'),
    tailForm, tailError, tail,
    h('h2', {}, 'History'), history);

  let job = null;
  const renderJob = (j) => {
    job = j;
    stateEl.replaceChildren(state(j.state));
    summary.textContent = `cluster ${j.cluster} v${j.version} · submitted ${age(Date.now() - j.submitted_at_ms)} ago`;
    const workerRow = (s, w) => h('tr', { 'data-worker': `${s.name}/${w.index}` },
      h('td', {}, '#' + w.index), h('td', {}, w.number), h('td', {}, w.agent || '–'), h('td', {}, state(w.state)),
      h('td', { class: 'num', 'data-cell': 'events-in' }, w.events_in), h('td', { class: 'num', 'data-cell': 'events-out' }, w.events_out),
      h('td', { class: 'num', 'data-cell': 'dropped' }, w.dropped), h('td', { class: 'num', 'data-cell': 'failed-calls' }, w.failed_calls), h('td', {}, w.pending_reason || w.last_failure || ''),
      h('td', {},
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Log of ${s.name} worker ${w.index}`,
          onclick: () => followLog(s.name, w.index) }, 'Log'),
        ' ',
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Resubmit ${s.name} worker ${w.index}`,
          onclick: async () => {
            try { await api('POST', `/api/v1/jobs/${path}/stages/${encodeURIComponent(s.name)}/workers/${w.index}/resubmit`); }
            catch (err) { error.textContent = errorText(err); }
          } }, 'Resubmit')));
    const headers = ['Worker', 'Number', 'Agent', 'State', 'In', 'Out', 'Dropped', 'Failed', 'Reason', ''];
    const numeric = ['In', 'Out', 'Dropped', 'Failed'];
    stages.replaceChildren(...j.stages.map((s) => h('table', { class: 'card', id: 'workers-' + s.name },
      h('caption', {}, `Stage ${s.name}`),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', class: numeric.includes(t) ? 'num' : '' }, t)))),
      h('tbody', {}, s.workers.map((w) => workerRow(s, w))))));
    if (!scaleForms.childElementCount) {
      scaleForms.replaceChildren(...j.stages.map((s) => {
        const input = h('input', { type: 'number', min: 1, max: 1000, id: 'scale-' + s.name, value: s.workers.length, size: 4 });
        return h('form', { class: 'row', onsubmit: async (e) => {
          e.preventDefault();
          try { renderJob(await api('POST', `/api/v1/jobs/${path}/stages/${encodeURIComponent(s.name)}/scale`, { workers: Number(input.value) })); error.textContent = ''; }
          catch (err) { error.textContent = errorText(err); }
        } }, h('label', { for: 'scale-' + s.name }, `Workers of stage ${s.name}`), input, h('button', { type: 'submit', id: 'scale-button-' + s.name }, 'Scale'));
      }));
    }
    history.replaceChildren(...j.history.slice(-20).map((t) => h('li', {}, `${age(Date.now() - t.at_ms)} ago: ${t.state}${t.reason ? ' — ' + t.reason : ''}`)));
    if (ENDED.includes(j.state)) kill.disabled = true;
  };
  try { renderJob(await api('GET', `/api/v1/jobs/${path}`)); } catch (err) {
    main(h('h1', {}, 'Job ', id), h('p', { class: 'error', role: 'alert' }, errorText(err)));
    return;
  }
  onLeave(stream(`/api/v1/jobs/${path}/status`, (name, data) => { if (name === 'status') renderJob(JSON.parse(data)); },
    (err) => { error.textContent = errorText(err); }));

  let last = null;
  onLeave(stream(`/api/v1/jobs/${path}/metrics/stream`, (name, data) => {
    if (name !== 'metrics') return;
    const m = JSON.parse(data);
    // The workers' counts, fresher than the job document (which changes only with states).
    for (const s of m.stages) {
      for (const w of s.workers) {
        const row = stages.querySelector(`tr[data-worker="${CSS.escape(s.name)}/${w.index}"]`);
        if (!row) continue;
        for (const cell of row.querySelectorAll('td[data-cell]')) cell.textContent = w.totals[cell.dataset.cell];
      }
    }
    if (last) {
      const dt = (m['at-ms'] - last['at-ms']) / 1000;
      if (dt > 0) {
        let sumIn = 0;
        m.stages.forEach((s, i) => {
          const a = s.totals, b = (last.stages[i] || s).totals;
          const d = (k) => Math.max(0, a[k] - b[k]);
          charts.in.push(s.name, d('events-in') / dt);
          charts.out.push(s.name, d('events-out') / dt);
          charts.drops.push(s.name, d('dropped') / dt);
          charts.call.push(s.name, d('calls') ? d('guest-nanos') / d('calls') / 1000 : 0);
          sumIn += d('events-in') / dt;
        });
        charts.in.draw(rate(sumIn) + '/s');
        const total = (k) => m.stages.reduce((acc, s, i) => acc + Math.max(0, s.totals[k] - (last.stages[i] || s).totals[k]), 0);
        charts.out.draw(rate(total('events-out') / dt) + '/s');
        charts.drops.draw(rate(total('dropped') / dt) + '/s');
        charts.call.draw(m.stages.map((s) => `${s.name} p99 ≤ ${s['call-micros'].p99} µs`).join(', '));
      }
    }
    last = m;
  }, (err) => { error.textContent = errorText(err); }));

  let closeLog = null;
  const followLog = (stage, index) => {
    if (closeLog) closeLog();
    logTitle.textContent = `Worker log — ${stage} #${index}`;
    log.textContent = '';
    closeLog = stream(`/api/v1/jobs/${path}/stages/${encodeURIComponent(stage)}/workers/${index}/logs?follow=true`, (name, data) => {
      if (name !== 'log') return;
      const l = JSON.parse(data);
      log.append(`${new Date(l['at-ms']).toISOString()} ${l.level.padEnd(5)} ${l.message}\n`);
      while (log.childNodes.length > LOG_LINES) log.firstChild.remove();
      log.scrollTop = log.scrollHeight;
    }, (err) => { log.textContent = errorText(err); });
  };
  onLeave(() => closeLog && closeLog());

  let closeTail = null;
  const stopTail = () => { if (closeTail) closeTail(); closeTail = null; tailButton.textContent = 'Start tail'; };
  tailForm.addEventListener('submit', (e) => {
    e.preventDefault();
    if (closeTail) { stopTail(); return; }
    tailError.replaceChildren();
    tail.textContent = '';
    const q = query.value.trim();
    const sink = `/api/v1/jobs/${path}/sink` + (q ? '?query=' + encodeURIComponent(q) : '');
    tailButton.textContent = 'Stop tail';
    closeTail = stream(sink, (name, data) => {
      if (name === 'message') {
        tail.append(data + '\n');
        while (tail.childNodes.length > TAIL_LINES) tail.firstChild.remove();
        tail.scrollTop = tail.scrollHeight;
      } else if (name === 'error') {
        const e = JSON.parse(data);
        tailError.replaceChildren(h('p', { class: 'error' }, `${e.code}: ${e.message}`));
      }
    }, (err) => {
      stopTail();
      const column = /column (\d+)/.exec(err.message || '');
      tailError.replaceChildren(h('p', { class: 'error' }, errorText(err)),
        column ? h('div', { class: 'caret', id: 'query-caret' }, q + '\n' + ' '.repeat(Math.max(0, Number(column[1]) - 1)) + '^') : '');
    });
  });
  onLeave(stopTail);
}

async function clustersPage() {
  const error = h('p', { class: 'error', role: 'alert' });
  const body = h('tbody', {});
  main(h('h1', {}, 'Clusters'), error, h('table', { id: 'clusters' },
    h('thead', {}, h('tr', {}, ['Cluster', 'Version', 'Source', 'Stages', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))), body));
  try {
    const clusters = await api('GET', '/api/v1/clusters');
    body.replaceChildren(...clusters.map((c) => h('tr', {},
      h('td', {}, c.name), h('td', {}, 'v' + c.version), h('td', {}, c.spec.source && c.spec.source.kind || ''),
      h('td', {}, c.spec.stages.map((s) => `${s.name} ×${s.workers || 1}`).join(' → ')),
      h('td', {}, age(Date.now() - c.created_at_ms) + ' ago'),
      h('td', {}, h('button', { type: 'button', 'aria-label': 'Submit a job of ' + c.name, onclick: async () => {
        try { const j = await api('POST', `/api/v1/clusters/${encodeURIComponent(c.name)}/jobs`, {}); location.hash = '#/jobs/' + encodeURIComponent(j.id); }
        catch (err) { error.textContent = errorText(err); }
      } }, 'Submit')))));
    if (!clusters.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 6 }, 'No clusters yet: create one with squilla cluster create.')));
  } catch (err) { error.textContent = errorText(err); }
}

async function artifactsPage() {
  const error = h('p', { class: 'error', role: 'alert' });
  const body = h('tbody', {});
  main(h('h1', {}, 'Artifacts'), error, h('table', { id: 'artifacts' },
    h('thead', {}, h('tr', {}, ['Name', 'sha256', 'Flavour', 'Size', 'Uploaded'].map((t) => h('th', { scope: 'col' }, t)))), body));
  try {
    const artifacts = await api('GET', '/api/v1/artifacts');
    body.replaceChildren(...artifacts.map((a) => h('tr', {},
      h('td', {}, a.name ? `${a.name}@${a.version}` : '–'), h('td', { title: a.sha256 }, a.sha256.slice(0, 12) + '…'),
      h('td', {}, a.flavour), h('td', { class: 'num' }, bytes(a.size)), h('td', {}, age(Date.now() - a.created_at_ms) + ' ago'))));
  } catch (err) { error.textContent = errorText(err); }
}

async function agentsPage() {
  const error = h('p', { class: 'error', role: 'alert' });
  const body = h('tbody', {});
  main(h('h1', {}, 'Agents'), error, h('table', { id: 'agents' },
    h('thead', {}, h('tr', {}, ['Agent', 'Zone', 'State', 'Slots', 'CPU reserved', 'Memory reserved', 'Linear memory', 'Last seen'].map((t) => h('th', { scope: 'col' }, t)))), body));
  const bar = (share, label) => h('span', {}, h('span', { class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(share * 100), 'aria-label': label },
    h('span', {})), ' ', Math.round(share * 100) + '%');
  const refresh = async () => {
    try {
      const agents = await api('GET', '/api/v1/agents');
      body.replaceChildren(...agents.map((a) => {
        const row = h('tr', {},
          h('td', {}, a.id), h('td', {}, a.zone), h('td', {}, state(a.lost ? 'lost' : 'alive')),
          h('td', { class: 'num' }, `${a.reserved.slots}/${a.capacity.slots}`),
          h('td', {}, bar(a.utilization.cpu, `CPU reserved on ${a.id}`)), h('td', {}, bar(a.utilization.memory, `Memory reserved on ${a.id}`)),
          h('td', { class: 'num' }, bytes(a.usage['memory-bytes'])), h('td', {}, age(a['silent-ms']) + ' ago'));
        row.querySelectorAll('.bar > span').forEach((s, i) => { s.style.width = Math.min(100, Math.round([a.utilization.cpu, a.utilization.memory][i] * 100)) + '%'; });
        return row;
      }));
      error.textContent = '';
    } catch (err) { error.textContent = errorText(err); }
  };
  await refresh();
  const timer = setInterval(refresh, 2000);
  onLeave(() => clearInterval(timer));
}

// ---------------------------------------------------------------- routing

let tenant = null;

function signedOut() {
  tenant = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  document.getElementById('sign-out').hidden = true;
}

async function route() {
  for (const f of cleanup) { try { f(); } catch (_) { /* already closed */ } }
  cleanup = [];
  const hash = location.hash || '#/jobs';
  if (!tenant) return signinPage();
  document.querySelectorAll('#nav a').forEach((a) => {
    if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  });
  let parts;
  try { parts = hash.slice(2).split('/').map(decodeURIComponent); } catch (_) { parts = ['jobs']; }
  const started = performance.now();
  if (parts[0] === 'jobs' && parts[1]) await jobPage(parts[1]);
  else if (parts[0] === 'clusters') await clustersPage();
  else if (parts[0] === 'artifacts') await artifactsPage();
  else if (parts[0] === 'agents') await agentsPage();
  else await jobsPage();
  document.body.dataset.page = parts[0] || 'jobs';
  document.body.dataset.readyMs = Math.round(performance.now() - started);
  document.getElementById('main').focus({ preventScroll: true });
}

async function start(hash) {
  try {
    tenant = (await api('GET', '/console/session')).tenant;
  } catch (_) {
    signedOut();
    return signinPage();
  }
  document.getElementById('nav').hidden = false;
  const who = document.getElementById('who');
  who.hidden = false;
  who.textContent = 'tenant ' + tenant;
  document.getElementById('sign-out').hidden = false;
  if (hash && location.hash !== hash) location.hash = hash; else await route();
}

window.addEventListener('hashchange', () => { if (location.hash.startsWith('#/')) route(); });
window.addEventListener('DOMContentLoaded', () => {
  document.getElementById('sign-out').addEventListener('click', async () => {
    try { await api('DELETE', '/console/session'); } catch (_) { /* signed out anyway */ }
    signedOut();
    location.hash = '#/signin';
    signinPage();
  });
  start();
});
