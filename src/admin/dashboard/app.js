// The sluice dashboard: polls /api/v1/status every second, asks /api/v1/top and
// /api/v1/windows, and follows /api/v1/stream for the chosen key. Every call may fail: the
// panel then says so and the call is retried; nothing here throws past its caller.
'use strict';

(() => {
  const { LineChart, fmtNum, fmtTime } = window.SluiceChart;
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  const STATUS_EVERY_MS = 1000;
  const TOP_EVERY_MS = 5000;
  const ALERTS_EVERY_MS = 2000;
  const RETRY_MS = 5000;
  const REQUEST_TIMEOUT_MS = 5000;
  const HISTORY_MS = 5 * 60 * 1000;
  const KEY_WINDOWS_MAX = 360;

  const state = {
    history: [], // {t, eps: {listener: events/s}, lag: {core: seconds}}
    prev: null, // the previous status and when it came
    windows: [],
    window: null,
    wantWindow: null, // asked for by the location hash
    by: 'count',
    key: '',
    keyToken: 0, // bumps on every key or window change; stale answers are dropped
    keyRows: new Map(), // start_ms → ROW
    stream: null,
    streamRetry: null,
    topTimer: null,
    topSoon: null,
    topRows: 0,
  };

  const charts = {
    throughput: new LineChart($('chart-throughput'), {
      spanMs: HISTORY_MS, empty: 'waiting for status…',
    }),
    lag: new LineChart($('chart-lag'), {
      spanMs: HISTORY_MS, empty: 'no watermark yet', format: (v) => fmtNum(v) + 's',
    }),
    keyCount: new LineChart($('chart-key-count'), {
      series: [{ label: 'count' }], empty: 'choose a key',
    }),
    keyValue: new LineChart($('chart-key-value'), {
      series: [{ label: 'mean' }, { label: 'p99' }], empty: 'choose a key',
    }),
  };

  function message(error) {
    if (error && error.name === 'AbortError') return 'timed out';
    return (error && error.message) || String(error);
  }

  /** GET `path` as JSON; throws with the API's own error message on a non-2xx answer. */
  async function getJson(path) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS);
    try {
      const r = await fetch(path, { signal: ctrl.signal, cache: 'no-store' });
      let body = null;
      try { body = await r.json(); } catch (_) { body = null; }
      if (!r.ok) throw new Error((body && body.error) || 'HTTP ' + r.status);
      if (body === null || typeof body !== 'object') throw new Error('the answer is not JSON');
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Runs `render`; if it fails (an answer of an unexpected shape), the panel says so. */
  function guarded(panel, msgEl, render) {
    try {
      render();
    } catch (e) {
      $(panel).dataset.state = 'error';
      if (msgEl) setMsg(msgEl, 'Cannot show this: ' + message(e), true);
      console.warn('sluice dashboard:', panel, e);
    }
  }

  function setMsg(id, text, isError) {
    const el = $(id);
    el.textContent = text || '';
    el.classList.toggle('error', Boolean(isError));
  }

  function text(id, value) { $(id).textContent = value; }

  function cell(row, value, cls) {
    const td = document.createElement('td');
    td.textContent = value;
    if (cls) td.className = cls;
    row.append(td);
    return td;
  }

  function fmtDuration(seconds) {
    if (!Number.isFinite(seconds)) return '–';
    if (seconds < 1) return Math.round(seconds * 1000) + ' ms';
    if (seconds < 90) return seconds.toFixed(seconds < 10 ? 1 : 0) + ' s';
    if (seconds < 5400) return Math.round(seconds / 60) + ' min';
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + ' h';
    return (seconds / 86400).toFixed(1) + ' d';
  }

  function fmtBytes(n) {
    if (!Number.isFinite(n)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }

  function updateReady() {
    const ready = Number(charts.throughput.points) >= 3 && state.topRows > 0 &&
      Number(charts.keyCount.points) > 0;
    document.body.dataset.ready = String(ready);
  }

  // --- Status: header, throughput, rejects and drops, watermark lag, checkpoint, latency ---

  function banner(textOrNull) {
    const el = $('banner');
    el.hidden = !textOrNull;
    el.textContent = textOrNull || '';
  }

  async function pollStatus() {
    try {
      const s = await getJson('/api/v1/status');
      banner(null);
      onStatus(s);
    } catch (e) {
      banner('Cannot reach sluice: ' + message(e) + '. Retrying every second; the panels show ' +
        'the last values received.');
      for (const id of ['panel-throughput', 'panel-listeners', 'panel-health']) {
        $(id).dataset.state = 'stale';
      }
    } finally {
      setTimeout(pollStatus, STATUS_EVERY_MS);
    }
  }

  function onStatus(s) {
    const now = Date.now();
    const listeners = Array.isArray(s.listeners) ? s.listeners : [];
    const cores = Array.isArray(s.cores) ? s.cores : [];
    const point = { t: now, eps: {}, lag: {} };
    for (const l of listeners) point.eps[l.name] = Number(l.events_per_sec);
    for (const c of cores) {
      point.lag[c.core] = Number.isFinite(c.watermark_lag_ms) ? c.watermark_lag_ms / 1000 : null;
    }
    state.history.push(point);
    while (state.history.length && state.history[0].t < now - HISTORY_MS) state.history.shift();

    guarded('panel-throughput', null, () => renderThroughput(listeners));
    guarded('panel-listeners', 'listeners-msg', () => renderListeners(listeners, s, now));
    guarded('panel-health', null, () => renderHealth(s, cores));
    guarded('panel-latency', 'latency-msg', () => renderLatency(s.latency));
    guarded('panel-top', 'top-msg', () => setWindows(s.windows));
    renderSummary(s, cores, now);
    state.prev = { s, t: now };
    updateReady();
  }

  function renderSummary(s, cores, now) {
    text('s-version', s.version || '–');
    text('s-uptime', fmtDuration(Number(s.uptime_seconds)));
    text('s-io', s.io || '–');
    text('s-cores', String(cores.length));
    text('s-keys', fmtNum(cores.reduce((a, c) => a + (Number(c.keys) || 0), 0)));
    const ready = $('s-ready');
    ready.textContent = s.ready ? 'ready' : 'not ready';
    ready.className = 'badge ' + (s.ready ? 'good' : 'bad');
    text('s-updated', 'updated ' + fmtTime(now));
  }

  function renderThroughput(listeners) {
    const names = listeners.map((l) => l.name);
    const xs = state.history.map((p) => p.t);
    const ys = names.map((n) => state.history.map((p) => (n in p.eps ? p.eps[n] : null)));
    charts.throughput.setData(xs, ys, names.map((n) => ({ label: n })));
    charts.throughput.legend($('legend-throughput'));
    $('panel-throughput').dataset.state = listeners.length ? 'ok' : 'empty';
  }

  /** Per second since the previous status, of a counter of listener `name`. */
  function rate(name, field, value, now) {
    if (!state.prev) return null;
    const before = (state.prev.s.listeners || []).find((l) => l.name === name);
    const secs = (now - state.prev.t) / 1000;
    if (!before || secs <= 0 || !Number.isFinite(before[field])) return null;
    return Math.max(0, value - before[field]) / secs;
  }

  function renderListeners(listeners, s, now) {
    const body = $('listeners-table').tBodies[0];
    body.textContent = '';
    for (const l of listeners) {
      const row = document.createElement('tr');
      const name = cell(row, l.name);
      name.title = l.format + ' over ' + l.proto;
      cell(row, fmtNum(l.connections_open), 'num');
      cell(row, fmtNum(l.events_total), 'num');
      const rejects = rate(l.name, 'rejects_total', l.rejects_total, now);
      const drops = rate(l.name, 'udp_drops_total', l.udp_drops_total, now);
      cell(row, fmtNum(l.rejects_total), 'num');
      cell(row, rejects === null ? '–' : fmtNum(rejects), rejects > 0 ? 'num bad' : 'num');
      cell(row, l.proto === 'udp' ? fmtNum(l.udp_drops_total) : '–', 'num');
      cell(row, l.proto === 'udp' && drops !== null ? fmtNum(drops) : '–',
        drops > 0 ? 'num bad' : 'num');
      body.append(row);
    }
    setMsg('listeners-msg', listeners.length ? '' : 'No listeners are configured.');
    $('panel-listeners').dataset.state = listeners.length ? 'ok' : 'empty';
  }

  function renderHealth(s, cores) {
    const ids = cores.map((c) => c.core);
    const xs = state.history.map((p) => p.t);
    const ys = ids.map((id) => state.history.map((p) => (id in p.lag ? p.lag[id] : null)));
    charts.lag.setData(xs, ys, ids.map((id) => ({ label: 'core ' + id + ' lag' })));
    charts.lag.legend($('legend-lag'));

    const cp = s.checkpoint || {};
    const age = $('cp-age');
    age.textContent = Number.isFinite(cp.age_seconds) ? fmtDuration(cp.age_seconds) + ' ago'
      : 'none yet';
    age.className = cp.age_seconds > 300 ? 'warn' : '';
    text('cp-duration', fmtDuration(Number(cp.duration_seconds)));
    text('cp-bytes', fmtBytes(Number(cp.bytes)));
    text('cp-epoch', fmtNum(cp.epoch));
    text('cp-committed', fmtNum(cp.committed_total));
    const failed = $('cp-failed');
    failed.textContent = fmtNum(cp.failed_total);
    failed.className = cp.failed_total > 0 ? 'bad' : '';
    const sum = (f) => cores.reduce((a, c) => a + (Number(c[f]) || 0), 0);
    text('w-late', fmtNum(sum('late_events_total')));
    text('w-queue', fmtNum(sum('queue_depth')));
    text('w-backpressure', fmtDuration(sum('backpressure_seconds_total')));
    $('panel-health').dataset.state = 'ok';
  }

  /**
   * Latency summaries, once status carries them (`latency`: {stage: {p50, p90, p99, max}}).
   * Until then the panel says they are not reported; nothing is made up.
   */
  function renderLatency(latency) {
    const table = $('latency-table');
    if (!latency || typeof latency !== 'object' || Object.keys(latency).length === 0) {
      table.hidden = true;
      $('panel-latency').dataset.state = 'absent';
      return;
    }
    const body = table.tBodies[0];
    body.textContent = '';
    for (const [stage, q] of Object.entries(latency)) {
      const row = document.createElement('tr');
      cell(row, stage);
      for (const f of ['p50', 'p90', 'p99', 'max']) {
        cell(row, q && Number.isFinite(q[f]) ? fmtNum(q[f]) : '–', 'num');
      }
      body.append(row);
    }
    table.hidden = false;
    setMsg('latency-msg', '');
    $('panel-latency').dataset.state = 'ok';
  }

  // --- Window sizes: offered by status, chosen in the header ---

  function setWindows(windows) {
    const list = Array.isArray(windows) ? windows.filter((w) => typeof w === 'string') : [];
    if (list.join() === state.windows.join()) return;
    state.windows = list;
    const select = $('window-select');
    select.textContent = '';
    for (const w of list) {
      const o = document.createElement('option');
      o.value = w;
      o.textContent = w;
      select.append(o);
    }
    if (list.length === 0) {
      state.window = null;
      setMsg('top-msg', 'This sluice answers no queries (no window sizes).', true);
      return;
    }
    const wanted = [state.window, state.wantWindow].find((w) => list.includes(w)) || list[0];
    select.value = wanted;
    if (wanted !== state.window) {
      state.window = wanted;
      refreshTop();
      loadKey();
    }
  }

  // --- Top keys of the last closed window ---

  function scheduleTop(ms) {
    clearTimeout(state.topTimer);
    state.topTimer = setTimeout(refreshTop, ms);
  }

  /** Refreshes top soon (a burst of stream events makes one request). */
  function topSoon() {
    if (state.topSoon) return;
    state.topSoon = setTimeout(() => { state.topSoon = null; refreshTop(); }, 300);
  }

  async function refreshTop() {
    if (!state.window) return;
    const window = state.window;
    const by = state.by;
    try {
      const t = await getJson('/api/v1/top?window=' + enc(window) + '&by=' + enc(by) + '&n=10');
      if (window === state.window && by === state.by) {
        guarded('panel-top', 'top-msg', () => renderTop(t, by));
      }
    } catch (e) {
      $('panel-top').dataset.state = 'error';
      setMsg('top-msg', 'Top keys unavailable: ' + message(e) + '. Retrying.', true);
    } finally {
      scheduleTop(TOP_EVERY_MS);
    }
  }

  function renderTop(t, by) {
    const rows = Array.isArray(t.top) ? t.top : [];
    const body = $('top-table').tBodies[0];
    body.textContent = '';
    text('top-by-head', by);
    const max = rows.reduce((m, r) => Math.max(m, Number(r[by]) || 0), 0);
    const list = $('key-list');
    list.textContent = '';
    rows.forEach((r, i) => {
      const row = document.createElement('tr');
      row.dataset.key = r.key;
      if (r.key === state.key) row.className = 'selected';
      cell(row, String(i + 1), 'num');
      const key = cell(row, r.key);
      key.title = r.key;
      cell(row, fmtNum(r.count), 'num');
      cell(row, fmtNum(r.mean), 'num');
      cell(row, fmtNum(r.p99), 'num');
      const measure = document.createElement('td');
      const bar = document.createElement('div');
      bar.className = 'bar';
      const fill = document.createElement('b');
      const v = Number(r[by]);
      fill.style.width = (max > 0 && v > 0 ? Math.max(1, (v / max) * 100) : 0) + '%';
      const label = document.createElement('span');
      label.textContent = fmtNum(v);
      bar.append(fill, label);
      measure.append(bar);
      row.append(measure);
      row.addEventListener('click', () => selectKey(r.key));
      body.append(row);
      const option = document.createElement('option');
      option.value = r.key;
      list.append(option);
    });
    state.topRows = rows.length;
    const start = Number(t.start_ms);
    text('top-title', Number.isFinite(start) && rows.length
      ? 'of the ' + t.window + ' window from ' + fmtTime(start)
      : 'of the last closed window');
    $('panel-top').dataset.state = rows.length ? 'ok' : 'empty';
    setMsg('top-msg', rows.length ? '' : 'No closed ' + t.window + ' window yet; keys appear ' +
      'here when the first one closes.');
    if (!state.key && rows.length) selectKey(rows[0].key);
    updateReady();
  }

  // --- One key's windows: history from /windows, then live from /stream ---

  function selectKey(key) {
    const k = String(key).trim();
    $('key-input').value = k;
    if (k === state.key) return;
    state.key = k;
    for (const row of $('top-table').tBodies[0].rows) {
      row.classList.toggle('selected', row.dataset.key === k);
    }
    writeHash();
    loadKey();
  }

  function closeStream() {
    clearTimeout(state.streamRetry);
    if (state.stream) state.stream.close();
    state.stream = null;
    $('key-live').hidden = true;
  }

  async function loadKey() {
    closeStream();
    state.keyToken++;
    state.keyRows = new Map();
    const token = state.keyToken;
    const key = state.key;
    const window = state.window;
    text('key-title', key ? key + (window ? ' · ' + window + ' windows' : '') : 'windows over time');
    renderKey();
    if (!key || !window) {
      $('panel-key').dataset.state = 'empty';
      setMsg('key-msg', 'Type a key, or click one in Top keys.');
      return;
    }
    // The stream first, so that no row closing meanwhile falls between the two.
    openStream(key, window, token);
    try {
      const r = await getJson('/api/v1/windows?key=' + enc(key) + '&window=' + enc(window) +
        '&last=60');
      if (token !== state.keyToken) return;
      for (const row of Array.isArray(r.windows) ? r.windows : []) addRow(row);
      guarded('panel-key', 'key-msg', renderKey);
    } catch (e) {
      if (token !== state.keyToken) return;
      $('panel-key').dataset.state = 'error';
      setMsg('key-msg', 'Windows of ' + key + ' unavailable: ' + message(e) + '. Retrying.', true);
      setTimeout(() => { if (token === state.keyToken) loadKey(); }, RETRY_MS);
    }
  }

  function openStream(key, window, token) {
    let es;
    try {
      es = new EventSource('/api/v1/stream?key=' + enc(key) + '&window=' + enc(window));
    } catch (e) {
      setMsg('key-msg', 'Cannot follow ' + key + ': ' + message(e), true);
      return;
    }
    state.stream = es;
    es.onopen = () => { $('key-live').hidden = false; };
    es.addEventListener('window', (ev) => {
      if (token !== state.keyToken) return;
      let row;
      try { row = JSON.parse(ev.data); } catch (_) { return; }
      if (!row || row.key !== key) return;
      addRow(row);
      guarded('panel-key', 'key-msg', renderKey);
      topSoon();
    });
    es.onerror = () => {
      $('key-live').hidden = true;
      // EventSource retries by itself unless the server refused (then it is CLOSED).
      if (es.readyState === EventSource.CLOSED && token === state.keyToken) {
        state.stream = null;
        state.streamRetry = setTimeout(() => {
          if (token === state.keyToken) openStream(key, window, token);
        }, RETRY_MS);
      }
    };
  }

  function addRow(row) {
    const start = Number(row && row.start_ms);
    if (!Number.isFinite(start)) return;
    state.keyRows.set(start, row);
    if (state.keyRows.size > KEY_WINDOWS_MAX) {
      const oldest = Math.min(...state.keyRows.keys());
      state.keyRows.delete(oldest);
    }
  }

  function num(v) { return v === undefined || v === null ? null : Number(v); }

  function renderKey() {
    const rows = [...state.keyRows.values()].sort((a, b) => a.start_ms - b.start_ms);
    const xs = rows.map((r) => Number(r.start_ms));
    charts.keyCount.setData(xs, [rows.map((r) => num(r.count))]);
    charts.keyValue.setData(xs, [rows.map((r) => num(r.mean)), rows.map((r) => num(r.p99))]);
    charts.keyCount.legend($('legend-key-count'));
    charts.keyValue.legend($('legend-key-value'));
    if (state.key) {
      $('panel-key').dataset.state = rows.length ? 'ok' : 'empty';
      setMsg('key-msg', rows.length ? '' : 'No closed ' + state.window + ' window of ' +
        state.key + ' yet; new ones appear as they close.');
    }
    updateReady();
  }

  // --- The location hash keeps the choice: #key=K&window=W&by=B ---

  function writeHash() {
    const parts = [];
    if (state.key) parts.push('key=' + enc(state.key));
    if (state.window) parts.push('window=' + enc(state.window));
    if (state.by !== 'count') parts.push('by=' + enc(state.by));
    try { history.replaceState(null, '', '#' + parts.join('&')); } catch (_) { /* file: */ }
  }

  function readHash() {
    let params;
    try { params = new URLSearchParams(location.hash.slice(1)); } catch (_) { return; }
    state.key = (params.get('key') || '').trim();
    state.wantWindow = params.get('window');
    const by = params.get('by');
    if (by && [...$('by-select').options].some((o) => o.value === by)) state.by = by;
    $('by-select').value = state.by;
    $('key-input').value = state.key;
  }

  // --- Alerts ---

  async function pollAlerts() {
    try {
      const a = await getJson('/api/v1/alerts');
      guarded('panel-alerts', 'alerts-msg', () => renderAlerts(a.alerts));
    } catch (e) {
      $('panel-alerts').dataset.state = 'stale';
      setMsg('alerts-msg', 'Cannot read the alerts: ' + message(e), true);
    } finally {
      setTimeout(pollAlerts, ALERTS_EVERY_MS);
    }
  }

  function renderAlerts(alerts) {
    if (!Array.isArray(alerts)) throw new Error('no alerts list');
    const body = $('alerts-table').querySelector('tbody');
    body.replaceChildren();
    for (const a of alerts) {
      const tr = document.createElement('tr');
      cell(tr, a.alert);
      cell(tr, a.key);
      cell(tr, a.state, a.state === 'firing' ? 'bad' : '');
      cell(tr, a.value === null || a.value === undefined ? '–' : fmtNum(Number(a.value)), 'num');
      cell(tr, fmtNum(Number(a.threshold)), 'num');
      cell(tr, a.starts_at || '–');
      cell(tr, (a.annotations && a.annotations.summary) || '');
      body.append(tr);
    }
    $('panel-alerts').dataset.state = alerts.length ? 'ok' : 'empty';
    setMsg('alerts-msg', alerts.length ? '' : 'Nothing pending or firing.', false);
  }

  // --- Wiring ---

  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    selectKey($('key-input').value);
  });
  $('by-select').addEventListener('change', (e) => {
    state.by = e.target.value;
    writeHash();
    refreshTop();
  });
  $('window-select').addEventListener('change', (e) => {
    state.window = e.target.value;
    writeHash();
    refreshTop();
    loadKey();
  });
  // Throughput and lag charts scroll with time even between samples.
  setInterval(() => { charts.throughput.draw(); charts.lag.draw(); }, 1000);

  // The window from the hash is taken once status says which sizes there are.
  readHash();
  pollStatus();
  pollAlerts();
})();
