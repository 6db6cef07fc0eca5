// Shared by the flame graph and table pages: the report data, formatting, the
// statistics box and the memory-over-time chart. Strings from the capture are only
// ever written with textContent or setAttribute, never parsed as HTML.
'use strict';

const MR = (function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const SVG_NS = 'http://www.w3.org/2000/svg';

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const k of Object.keys(attrs || {})) e.setAttribute(k, attrs[k]);
    return e;
  }

  function formatBytes(n) {
    if (!isFinite(n)) return '?';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
    let v = Math.abs(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    const s = i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0);
    return (n < 0 ? '-' : '') + s + ' ' + units[i];
  }

  function formatCount(n) {
    return Number(n).toLocaleString('en-US');
  }

  function pad(n, w) {
    return String(n).padStart(w || 2, '0');
  }

  function formatTime(ms) {
    const d = new Date(ms);
    if (!isFinite(ms) || ms <= 0 || isNaN(d.getTime())) return 'unknown';
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
  }

  function formatDuration(ms) {
    if (!isFinite(ms) || ms < 0) return 'unknown';
    if (ms < 1000) return ms + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
    const m = Math.floor(s / 60);
    const h = Math.floor(m / 60);
    const rest = Math.round(s - m * 60);
    return h > 0 ? h + ' h ' + (m % 60) + ' min ' + rest + ' s' : m + ' min ' + rest + ' s';
  }

  function modeText() {
    switch (data.mode) {
      case 'leaks': return 'memory leaked (still allocated when tracking ended)';
      case 'temporary': return 'temporary allocations (freed within ' + data.threshold + ' other allocation' + (data.threshold === 1 ? '' : 's') + ')';
      default: return 'memory allocated at the peak (high-water mark) of the heap';
    }
  }

  function header() {
    document.getElementById('title').textContent = data.title;
    document.getElementById('subtitle').textContent = 'Showing ' + modeText();
  }

  function renderStats(extra) {
    const s = data.stats;
    const dl = document.getElementById('stats');
    dl.textContent = '';
    const end = s.end_time_ms > 0 ? s.end_time_ms : data.memory.end_ms;
    const rows = [
      ['Command line', s.command_line],
      s.processes
        ? ['Processes', s.processes.length + ' (' + s.processes.join(', ') + ')']
        : ['PID', String(s.pid)],
      ['Start time', formatTime(s.start_time_ms)],
      ['End time', s.end_time_ms > 0 ? formatTime(s.end_time_ms) : 'unknown'],
      ['Duration', formatDuration(end - s.start_time_ms)],
      ['Total allocations', formatCount(s.total_allocations)],
      ['Total frames', formatCount(s.total_frames)],
      ['Peak memory usage', formatBytes(s.peak_memory)],
      ['Python allocator', s.python_allocator],
      ['Capture format', s.file_format + (s.native_traces ? ' (native traces)' : '')],
    ].concat(extra || []);
    if (s.processes) {
      rows.push(['Note', s.processes.length + ' captures merged: every figure is summed over the processes, and the peak is the sum of each process\u2019s own peak (they need not have peaked at the same time).']);
    }
    if (!s.complete) {
      rows.push(['Note', 'The capture has no trailer (the process was killed or is still running): the figures cover the records written so far.']);
    }
    if (s.python_allocator === 'pymalloc' && !s.trace_python_allocators) {
      rows.push(['Note', 'pymalloc serves small objects from arenas it gets from the system: the heap shows arenas, not individual objects (run with --trace-python-allocators to see them).']);
    }
    for (const [k, v] of rows) {
      dl.appendChild(el('dt', null, k));
      dl.appendChild(el('dd', null, v));
    }
  }

  // RSS and heap over time (SVG). With `brush`, a range can be dragged; `onRange(n, e)`
  // then gets the first and last unit (see temporal.rs) overlapping it.
  function MemoryChart(container, options) {
    const mem = data.memory;
    const samples = mem.samples;
    const opts = options || {};
    const H = 170;
    const M = { l: 72, r: 14, t: 12, b: 26 };
    const t0 = mem.start_ms;
    const t1 = Math.max(mem.end_ms, t0 + 1);
    const nUnits = mem.unit_peaks.length;
    let selection = null; // [ms, ms]
    let highlight = -1;
    let W = 0;
    let sx = null;
    let sy = null;
    const help = document.getElementById('chart-help');

    function unitStart(i) {
      return i === 0 ? t0 : samples[i - 1][0];
    }

    function unitEnd(i) {
      return i < samples.length ? samples[i][0] : t1;
    }

    // Units overlapping [a, b] (times in ms).
    function unitsFor(a, b) {
      let n = 0;
      while (n < nUnits - 1 && unitEnd(n) < a) n++;
      let e = nUnits - 1;
      while (e > n && unitStart(e) > b) e--;
      return [n, e];
    }

    function draw() {
      container.textContent = '';
      W = Math.max(container.clientWidth, 200);
      const root = svg('svg', { width: W, height: H, class: 'chart-svg', role: 'img', 'aria-label': 'Memory over time' });
      container.appendChild(root);
      if (samples.length === 0) {
        const t = svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty' });
        t.textContent = 'No memory samples in this capture';
        root.appendChild(t);
        return;
      }
      let maxY = 1;
      for (const s of samples) maxY = Math.max(maxY, s[1], s[2]);
      for (const p of mem.unit_peaks) maxY = Math.max(maxY, p);
      const iw = W - M.l - M.r;
      const ih = H - M.t - M.b;
      sx = (t) => M.l + (t - t0) / (t1 - t0) * iw;
      sy = (v) => M.t + ih - v / maxY * ih;
      const grid = svg('g', { class: 'grid' });
      for (let i = 0; i <= 4; i++) {
        const v = maxY * i / 4;
        const y = sy(v);
        grid.appendChild(svg('line', { x1: M.l, x2: W - M.r, y1: y, y2: y }));
        const t = svg('text', { x: M.l - 6, y: y + 4, 'text-anchor': 'end' });
        t.textContent = formatBytes(Math.round(v));
        grid.appendChild(t);
      }
      const ticks = Math.max(2, Math.floor(iw / 110));
      for (let i = 0; i <= ticks; i++) {
        const tm = t0 + (t1 - t0) * i / ticks;
        const t = svg('text', { x: sx(tm), y: H - 8, 'text-anchor': i === 0 ? 'start' : i === ticks ? 'end' : 'middle' });
        t.textContent = formatDuration(Math.round(tm - t0));
        grid.appendChild(t);
      }
      root.appendChild(grid);
      if (highlight >= 0 && highlight < nUnits) {
        const a = sx(unitStart(highlight));
        const b = sx(unitEnd(highlight));
        root.appendChild(svg('rect', { x: a, y: M.t, width: Math.max(b - a, 2), height: ih, class: 'peak-unit' }));
      }
      const line = (idx, cls) => {
        const pts = samples.map((s) => sx(s[0]).toFixed(1) + ',' + sy(s[idx]).toFixed(1));
        if (samples.length === 1) {
          root.appendChild(svg('circle', { cx: sx(samples[0][0]), cy: sy(samples[0][idx]), r: 3, class: cls }));
        }
        root.appendChild(svg('polyline', { points: pts.join(' '), class: cls }));
      };
      line(1, 'rss-line');
      line(2, 'heap-line');
      const legend = svg('g', { class: 'legend' });
      [['rss-key', 'Resident set size'], ['heap-key', 'Heap size']].forEach(([cls, label], i) => {
        const x = M.l + 10 + i * 150;
        legend.appendChild(svg('rect', { x: x, y: M.t + 2, width: 12, height: 4, class: cls }));
        const t = svg('text', { x: x + 16, y: M.t + 8 });
        t.textContent = label;
        legend.appendChild(t);
      });
      root.appendChild(legend);
      if (selection && opts.brush) {
        const a = sx(selection[0]);
        const b = sx(selection[1]);
        root.appendChild(svg('rect', { x: Math.min(a, b), y: M.t, width: Math.max(Math.abs(b - a), 1), height: ih, class: 'selection' }));
      }
      const overlay = svg('rect', { x: M.l, y: M.t, width: iw, height: ih, class: 'overlay' + (opts.brush ? ' brush' : '') });
      root.appendChild(overlay);
      overlay.addEventListener('pointermove', (ev) => {
        const tm = timeAt(ev);
        let best = 0;
        for (let i = 1; i < samples.length; i++) if (Math.abs(samples[i][0] - tm) < Math.abs(samples[best][0] - tm)) best = i;
        const s = samples[best];
        help.textContent = formatDuration(s[0] - t0) + ': RSS ' + formatBytes(s[1]) + ', heap ' + formatBytes(s[2]);
        if (drag) {
          drag[1] = tm;
          selection = [Math.min(drag[0], drag[1]), Math.max(drag[0], drag[1])];
          draw();
        }
      });
      if (opts.brush) {
        overlay.addEventListener('pointerdown', (ev) => {
          drag = [timeAt(ev), timeAt(ev)];
        });
        overlay.addEventListener('dblclick', () => {
          drag = null;
          setSelection(t0, t1, true);
        });
      }
    }

    let drag = null;
    window.addEventListener('pointerup', () => {
      if (!drag) return;
      const d = drag;
      drag = null;
      // A click without a drag selects everything again.
      if (Math.abs(sx(d[1]) - sx(d[0])) < 3) setSelection(t0, t1, true);
      else setSelection(Math.min(d[0], d[1]), Math.max(d[0], d[1]), true);
    });

    function timeAt(ev) {
      const r = container.querySelector('svg').getBoundingClientRect();
      const x = ev.clientX - r.left;
      const t = t0 + (x - M.l) / (W - M.l - M.r) * (t1 - t0);
      return Math.min(Math.max(t, t0), t1);
    }

    function setSelection(a, b, notify) {
      selection = [a, b];
      draw();
      if (notify && opts.onRange) {
        const [n, e] = unitsFor(a, b);
        opts.onRange(n, e, a, b);
      }
    }

    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(draw, 100);
    });
    if (opts.brush) selection = [t0, t1];
    draw();
    help.textContent = opts.brush ? 'Drag over the chart to choose a time range; double-click to select all.' : '';

    return {
      setHighlight(i) {
        highlight = i;
        draw();
      },
      setSelection,
      unitsFor,
      unitStart,
      unitEnd,
      range: () => [t0, t1],
    };
  }

  return { data, el, svg, formatBytes, formatCount, formatTime, formatDuration, header, renderStats, MemoryChart };
})();
