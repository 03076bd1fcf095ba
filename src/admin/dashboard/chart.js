// A small line chart on canvas for the sluice dashboard: time on x, values from 0 up on y,
// one line per series, a crosshair with the values under the mouse. No dependencies, so the
// page needs nothing from the internet.
'use strict';

window.SluiceChart = (() => {
  // Okabe-Ito: told apart by people with the common colour blindnesses.
  const COLORS = ['#0072b2', '#e69f00', '#009e73', '#d55e00', '#cc79a7', '#56b4e9', '#000000',
    '#999999'];
  const PAD = { left: 50, right: 10, top: 8, bottom: 18 };

  /** 1234 → "1.23k"; keeps small values readable. */
  function fmtNum(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return '–';
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 1 : 2) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 1 : 2) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
    if (a >= 100 || Number.isInteger(v)) return Math.round(v).toString();
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return '0';
    return v.toPrecision(2);
  }

  function pad2(n) { return n < 10 ? '0' + n : String(n); }

  /** Local wall-clock time of `ms`, HH:MM:SS. */
  function fmtTime(ms) {
    const d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  function niceStep(range, ticks) {
    const raw = range / ticks;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  }

  const TIME_STEPS_MS = [1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3,
    1800e3, 3600e3, 7200e3, 21600e3, 43200e3, 86400e3];

  class LineChart {
    /**
     * `opts`: series [{label}], spanMs (x ends now and reaches back this far; else the data's
     * range), empty (text shown without data), format (y value → text).
     */
    constructor(canvas, opts) {
      this.canvas = canvas;
      this.opts = opts;
      this.series = opts.series || [];
      this.xs = [];
      this.ys = [];
      this.hoverX = null;
      canvas.addEventListener('mousemove', (e) => { this.hoverX = e.offsetX; this.draw(); });
      canvas.addEventListener('mouseleave', () => { this.hoverX = null; this.draw(); });
      if (window.ResizeObserver) {
        new ResizeObserver(() => this.draw()).observe(canvas.parentElement);
      }
    }

    color(i) { return COLORS[i % COLORS.length]; }

    /** Replaces the data: `xs` times in ms, `ys[s][i]` series s at xs[i] (null: no value). */
    setData(xs, ys, series) {
      if (series) this.series = series;
      this.xs = xs;
      this.ys = ys;
      let points = 0;
      for (const line of ys) for (const v of line) if (v !== null && Number.isFinite(v)) points++;
      this.canvas.dataset.points = String(points);
      this.points = points;
      this.draw();
    }

    /** Fills `el` with a swatch and label per series. */
    legend(el) {
      el.textContent = '';
      this.series.forEach((s, i) => {
        const item = document.createElement('span');
        const swatch = document.createElement('i');
        swatch.style.background = this.color(i);
        item.append(swatch, document.createTextNode(s.label));
        el.append(item);
      });
    }

    xRange() {
      if (this.opts.spanMs) {
        const now = Date.now();
        return [now - this.opts.spanMs, now];
      }
      if (this.xs.length === 0) return [Date.now() - 60e3, Date.now()];
      const lo = this.xs[0];
      const hi = this.xs[this.xs.length - 1];
      return hi > lo ? [lo, hi] : [lo - 30e3, hi + 30e3];
    }

    yMax() {
      let max = 0;
      for (const line of this.ys) for (const v of line) if (Number.isFinite(v) && v > max) max = v;
      if (max <= 0) return 1;
      const step = niceStep(max, 4);
      return Math.ceil((max * 1.05) / step) * step;
    }

    draw() {
      const c = this.canvas;
      const w = c.clientWidth;
      const h = c.clientHeight;
      if (w === 0 || h === 0) return;
      const dpr = window.devicePixelRatio || 1;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const ctx = c.getContext('2d');
      if (!ctx) return;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      ctx.font = '11px system-ui, sans-serif';
      const fmt = this.opts.format || fmtNum;
      const [x0, x1] = this.xRange();
      const yMax = this.yMax();
      const pw = w - PAD.left - PAD.right;
      const ph = h - PAD.top - PAD.bottom;
      const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * pw;
      const py = (y) => PAD.top + ph - (y / yMax) * ph;

      // Grid and y labels.
      ctx.strokeStyle = '#e8ecf0';
      ctx.fillStyle = '#66717d';
      ctx.lineWidth = 1;
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      const yStep = niceStep(yMax, 4);
      for (let y = 0; y <= yMax + yStep / 1e6; y += yStep) {
        const yy = Math.round(py(y)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(PAD.left, yy);
        ctx.lineTo(w - PAD.right, yy);
        ctx.stroke();
        ctx.fillText(fmt(y), PAD.left - 5, yy);
      }
      // Time labels.
      ctx.textAlign = 'center';
      ctx.textBaseline = 'top';
      const want = Math.max(2, Math.floor(pw / 90));
      const tStep = TIME_STEPS_MS.find((s) => (x1 - x0) / s <= want) || 86400e3;
      for (let t = Math.ceil(x0 / tStep) * tStep; t <= x1; t += tStep) {
        const xx = Math.round(px(t)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(xx, PAD.top);
        ctx.lineTo(xx, PAD.top + ph);
        ctx.stroke();
        // Kept inside the canvas: a label at either edge is moved in rather than cut.
        const label = fmtTime(t);
        const half = ctx.measureText(label).width / 2;
        ctx.fillText(label, Math.min(Math.max(xx, half + 1), w - half - 1), PAD.top + ph + 4);
      }

      if (!this.points) {
        ctx.textAlign = 'center';
        ctx.textBaseline = 'middle';
        ctx.fillStyle = '#8a949e';
        ctx.fillText(this.opts.empty || 'no data yet', PAD.left + pw / 2, PAD.top + ph / 2);
        return;
      }

      // Lines (a gap where a value is missing); a lone point gets a dot.
      ctx.save();
      ctx.beginPath();
      ctx.rect(PAD.left, PAD.top - 2, pw, ph + 4);
      ctx.clip();
      this.ys.forEach((line, s) => {
        ctx.strokeStyle = this.color(s);
        ctx.fillStyle = this.color(s);
        ctx.lineWidth = 1.6;
        ctx.beginPath();
        let open = false;
        for (let i = 0; i < this.xs.length; i++) {
          const v = line[i];
          if (v === null || !Number.isFinite(v)) { open = false; continue; }
          const prevMissing = i === 0 || !Number.isFinite(line[i - 1]);
          const nextMissing = i + 1 >= this.xs.length || !Number.isFinite(line[i + 1]);
          if (prevMissing && nextMissing) {
            ctx.fillRect(px(this.xs[i]) - 1.5, py(v) - 1.5, 3, 3);
          }
          if (open) ctx.lineTo(px(this.xs[i]), py(v));
          else ctx.moveTo(px(this.xs[i]), py(v));
          open = true;
        }
        ctx.stroke();
      });
      ctx.restore();
      this.drawHover(ctx, px, py, w, fmt);
    }

    /** The crosshair: the nearest point in time and every series' value there. */
    drawHover(ctx, px, py, w, fmt) {
      if (this.hoverX === null || this.xs.length === 0) return;
      let best = 0;
      for (let i = 1; i < this.xs.length; i++) {
        if (Math.abs(px(this.xs[i]) - this.hoverX) < Math.abs(px(this.xs[best]) - this.hoverX)) {
          best = i;
        }
      }
      const xx = Math.round(px(this.xs[best])) + 0.5;
      ctx.strokeStyle = '#9aa5b1';
      ctx.beginPath();
      ctx.moveTo(xx, PAD.top);
      ctx.lineTo(xx, this.canvas.clientHeight - PAD.bottom);
      ctx.stroke();
      const lines = [fmtTime(this.xs[best])];
      this.ys.forEach((line, s) => {
        const label = this.series[s] ? this.series[s].label : '';
        lines.push(label + ': ' + fmt(line[best]));
      });
      const boxW = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 12;
      const boxH = lines.length * 14 + 6;
      const bx = xx + boxW + 8 > w ? xx - boxW - 6 : xx + 6;
      ctx.fillStyle = 'rgba(255,255,255,0.94)';
      ctx.strokeStyle = '#c5cdd5';
      ctx.fillRect(bx, PAD.top, boxW, boxH);
      ctx.strokeRect(bx + 0.5, PAD.top + 0.5, boxW, boxH);
      ctx.textAlign = 'left';
      ctx.textBaseline = 'top';
      lines.forEach((l, i) => {
        ctx.fillStyle = i === 0 ? '#1d2630' : this.color(i - 1);
        ctx.fillText(l, bx + 6, PAD.top + 4 + i * 14);
      });
      this.ys.forEach((line, s) => {
        const v = line[best];
        if (!Number.isFinite(v)) return;
        ctx.fillStyle = this.color(s);
        ctx.beginPath();
        ctx.arc(xx, py(v), 3, 0, 2 * Math.PI);
        ctx.fill();
      });
    }
  }

  return { LineChart, fmtNum, fmtTime };
})();
