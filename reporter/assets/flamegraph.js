// The flame graph (icicle: callers above callees). The data is a tree of frames built
// and pruned by the reporter; filters (thread, irrelevant and import-system frames)
// make a "view" tree from it, and only frames at least MIN_PX wide are drawn, so the
// number of elements is bounded by the width of the page, not by the capture.
(function () {
  'use strict';
  const D = MR.data;
  const S = D.strings;
  const INTERESTING = 1;
  const IMPORT = 2;
  const OTHER = 4;
  const TOO_DEEP = 8;
  const NATIVE = 32;
  const ROW = 18;
  const MIN_PX = 1;
  const chartEl = document.getElementById('flamegraph');
  const tooltip = document.getElementById('tooltip');
  const resetButton = document.getElementById('reset-zoom');
  const searchInput = document.getElementById('search');
  const searchResult = document.getElementById('search-result');
  const hideIrrelevant = document.getElementById('hide-irrelevant');
  if (D.stats.native_traces) document.getElementById('native-legend').hidden = false;
  const hideImports = document.getElementById('hide-imports');
  const threadSelect = document.getElementById('thread-filter');
  const selectionInfo = document.getElementById('selection-info');

  function loadTree(t) {
    const n = t.parent.length;
    const nodes = new Array(n);
    for (let i = 0; i < n; i++) {
      nodes[i] = {
        fn: S[t.fn[i]], file: S[t.file[i]], line: t.line[i], thread: S[t.thread[i]],
        value: t.value[i], count: t.count[i], flags: t.flags[i], folded: t.folded[i], children: [],
      };
    }
    for (let i = 1; i < n; i++) nodes[t.parent[i]].children.push(nodes[i]);
    return { nodes, parent: t.parent };
  }

  const trees = { main: loadTree(D.tree), noImports: D.no_imports_tree ? loadTree(D.no_imports_tree) : null };
  const state = { thread: null, search: '', zoomPath: [] };
  let view = null; // root of the view tree
  let zoomed = null;
  let drawn = []; // view node of each drawn element, by data-idx

  function baseTree() {
    // Inverted graphs hide the import system with a tree built without it (as Memray).
    return D.inverted && hideImports.checked && trees.noImports ? trees.noImports : trees.main;
  }

  function keyOf(c) {
    return c.fn + '\u0000' + c.file + '\u0000' + c.line + '\u0000' + c.thread + '\u0000' + (c.flags & (OTHER | TOO_DEEP));
  }

  for (const t of [trees.main, trees.noImports]) {
    if (!t) continue;
    for (const n of t.nodes) n.boring = n.children.some((c) => !(c.flags & INTERESTING));
  }

  function buildView() {
    const tree = baseTree();
    const dropImports = hideImports.checked && !D.inverted;
    const splice = hideIrrelevant.checked;
    const wanted = state.thread;
    const skip = (c) => (wanted !== null && c.thread !== wanted) || (dropImports && (c.flags & IMPORT)) ||
      (c.value === 0 && c.count === 0);
    const make = (c) => ({ fn: c.fn, file: c.file, line: c.line, thread: c.thread, flags: c.flags, folded: c.folded,
      value: c.value, count: c.count, bases: [c], children: null, parent: null });
    function collect(children, map, out) {
      for (const c of children) {
        if (skip(c)) continue;
        if (splice && !(c.flags & INTERESTING)) {
          // Irrelevant frames vanish; their callees take their place (merged by frame).
          collect(c.children, map, out);
          continue;
        }
        const key = keyOf(c);
        const v = map.get(key);
        if (!v) {
          const made = make(c);
          map.set(key, made);
          out.push(made);
        } else {
          v.value += c.value;
          v.count += c.count;
          v.folded += c.folded;
          v.bases.push(c);
        }
      }
    }
    function expand(v) {
      let out;
      if (v.bases.length === 1 && !(splice && v.bases[0].boring)) {
        // The common case: children map one to one, no merging needed.
        out = [];
        for (const c of v.bases[0].children) if (!skip(c)) out.push(make(c));
      } else {
        out = [];
        const map = new Map();
        for (const b of v.bases) collect(b.children, map, out);
      }
      out.sort((a, b) => b.value - a.value);
      v.children = out;
      for (const c of out) {
        c.parent = v;
        expand(c);
      }
    }
    const base = tree.nodes[0];
    const root = { fn: '<root>', file: '', line: 0, thread: '', flags: INTERESTING | 16, folded: 0, value: base.value, count: base.count, bases: [base], children: null, parent: null };
    expand(root);
    if (wanted !== null) {
      root.value = root.children.reduce((s, c) => s + c.value, 0);
      root.count = root.children.reduce((s, c) => s + c.count, 0);
    }
    view = root;
    // Keep the zoom on the same frames when possible.
    zoomed = root;
    for (const k of state.zoomPath) {
      const next = zoomed.children.find((c) => keyOf(c) === k);
      if (!next) break;
      zoomed = next;
    }
  }

  function label(n) {
    if (n === view) return 'all: ' + MR.formatBytes(n.value);
    if (n.flags & OTHER) return 'other: ' + n.folded + ' smaller frame' + (n.folded === 1 ? '' : 's');
    if (n.flags & TOO_DEEP) return '<STACK TOO DEEP>';
    return n.fn + ' (' + n.file + ':' + n.line + ')' + (n.flags & NATIVE ? ' [native]' : '');
  }

  function hash(s) {
    let h = 2166136261;
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 16777619);
    }
    return h >>> 0;
  }

  function color(n) {
    if (n === view) return 'hsl(220, 12%, 82%)';
    if (n.flags & OTHER) return 'hsl(0, 0%, 78%)';
    if (n.flags & TOO_DEEP) return 'hsl(0, 70%, 70%)';
    const h = hash(n.fn + n.file);
    if (n.flags & IMPORT) return 'hsl(' + (200 + h % 30) + ', 35%, ' + (72 + (h >> 8) % 10) + '%)';
    if (n.flags & NATIVE) {
      // Native frames: green-teal, dimmer when CPython's own.
      const s = n.flags & INTERESTING ? 45 : 15;
      return 'hsl(' + (150 + h % 30) + ', ' + s + '%, ' + (62 + (h >> 8) % 12) + '%)';
    }
    if (!(n.flags & INTERESTING)) return 'hsl(45, 10%, ' + (72 + (h >> 8) % 10) + '%)';
    return 'hsl(' + (10 + h % 40) + ', ' + (70 + (h >> 6) % 20) + '%, ' + (60 + (h >> 12) % 14) + '%)';
  }

  function addFrame(frag, n, x, w, depth, cls) {
    const d = document.createElement('div');
    d.className = 'frame' + (cls ? ' ' + cls : '');
    d.style.left = x.toFixed(2) + 'px';
    d.style.width = Math.max(w, 0).toFixed(2) + 'px';
    d.style.top = (depth * ROW) + 'px';
    d.style.backgroundColor = color(n);
    // Text only where it can show: shaping thousands of hidden labels is what costs.
    if (w >= 18) d.textContent = label(n);
    d.dataset.idx = String(drawn.length);
    drawn.push(n);
    frag.appendChild(d);
  }

  function render() {
    const W = chartEl.clientWidth;
    chartEl.textContent = '';
    drawn = [];
    const frag = document.createDocumentFragment();
    const chain = [];
    for (let a = zoomed; a; a = a.parent) chain.unshift(a);
    chain.forEach((a, d) => addFrame(frag, a, 0, W, d, a === zoomed ? 'zoomed' : 'ancestor'));
    let maxDepth = chain.length - 1;
    // Iterative, so that deep stacks cannot overflow the JS stack.
    const todo = [[zoomed, 0, W, chain.length]];
    while (todo.length) {
      const [node, x, w, depth] = todo.pop();
      if (!(node.value > 0)) continue;
      let cx = x;
      for (const c of node.children) {
        const cw = w * Math.max(c.value, 0) / node.value;
        if (cw >= MIN_PX) {
          addFrame(frag, c, cx, cw, depth, '');
          if (depth > maxDepth) maxDepth = depth;
          todo.push([c, cx, cw, depth + 1]);
        }
        cx += cw;
      }
    }
    chartEl.style.height = ((maxDepth + 1) * ROW) + 'px';
    chartEl.appendChild(frag);
    resetButton.disabled = zoomed === view;
    applySearch();
  }

  function matches(n, term) {
    if (n === view || (n.flags & OTHER)) return false;
    return n.fn.toLowerCase().includes(term) || n.file.toLowerCase().includes(term);
  }

  function applySearch() {
    const term = state.search;
    const els = chartEl.children;
    for (let i = 0; i < els.length; i++) {
      const n = drawn[i];
      els[i].classList.toggle('match', term !== '' && matches(n, term));
    }
    if (term === '') {
      searchResult.textContent = '';
      return;
    }
    // Matching frames anywhere under the zoomed one, the outermost match of each path
    // counted once.
    let count = 0;
    let bytes = 0;
    const todo = [zoomed];
    while (todo.length) {
      const n = todo.pop();
      if (n !== zoomed && matches(n, term)) {
        count++;
        bytes += n.value;
        continue;
      }
      for (const c of n.children) todo.push(c);
    }
    const total = zoomed.value > 0 ? zoomed.value : 1;
    searchResult.textContent = count + ' matching frame' + (count === 1 ? '' : 's') + ', ' + MR.formatBytes(bytes) +
      ' (' + (100 * bytes / total).toFixed(1) + '%)';
  }

  function zoomTo(n) {
    zoomed = n;
    const path = [];
    for (let a = n; a && a.parent; a = a.parent) path.unshift(keyOf(a));
    state.zoomPath = path;
    hideTooltip();
    render();
  }

  function hideTooltip() {
    tooltip.hidden = true;
  }

  function showTooltip(n, ev) {
    tooltip.textContent = '';
    const add = (cls, text) => tooltip.appendChild(MR.el('div', cls, text));
    const total = view.value > 0 ? view.value : 1;
    if (n === view) {
      add('tt-title', 'All allocations shown');
    } else if (n.flags & OTHER) {
      add('tt-title', 'Other frames');
      add('tt-line', n.folded + ' frame' + (n.folded === 1 ? '' : 's') + ' too small to show, folded together');
    } else {
      add('tt-title', n.fn);
      add('tt-line', 'File: ' + n.file);
      add('tt-line', 'Line: ' + n.line);
    }
    if (!D.merge_threads && n.thread) add('tt-line', 'Thread: ' + n.thread);
    add('tt-line', 'Size: ' + MR.formatBytes(n.value) + ' (' + MR.formatCount(n.value) + ' bytes, ' + (100 * n.value / total).toFixed(2) + '%)');
    add('tt-line', 'Allocations: ' + MR.formatCount(n.count));
    tooltip.hidden = false;
    const pad = 14;
    const r = tooltip.getBoundingClientRect();
    let x = ev.clientX + pad;
    let y = ev.clientY + pad;
    if (x + r.width > window.innerWidth) x = Math.max(0, ev.clientX - r.width - pad);
    if (y + r.height > window.innerHeight) y = Math.max(0, ev.clientY - r.height - pad);
    tooltip.style.left = (x + window.scrollX) + 'px';
    tooltip.style.top = (y + window.scrollY) + 'px';
  }

  function frameOf(ev) {
    const t = ev.target.closest ? ev.target.closest('.frame') : null;
    return t && chartEl.contains(t) ? drawn[Number(t.dataset.idx)] : null;
  }

  chartEl.addEventListener('click', (ev) => {
    const n = frameOf(ev);
    if (n) zoomTo(n);
  });
  chartEl.addEventListener('mousemove', (ev) => {
    const n = frameOf(ev);
    if (n) showTooltip(n, ev);
    else hideTooltip();
  });
  chartEl.addEventListener('mouseleave', hideTooltip);
  resetButton.addEventListener('click', () => zoomTo(view));
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && document.activeElement !== searchInput) zoomTo(view);
  });
  searchInput.addEventListener('input', () => {
    state.search = searchInput.value.trim().toLowerCase();
    applySearch();
  });
  function rebuild() {
    buildView();
    render();
  }
  hideIrrelevant.addEventListener('change', rebuild);
  hideImports.addEventListener('change', rebuild);

  if (!D.merge_threads && D.threads.length > 1) {
    document.getElementById('thread-filter-label').hidden = false;
    threadSelect.appendChild(MR.el('option', null, 'All threads')).value = '';
    for (const t of D.threads) {
      const o = MR.el('option', null, S[t]);
      o.value = S[t];
      threadSelect.appendChild(o);
    }
    threadSelect.addEventListener('change', () => {
      state.thread = threadSelect.value === '' ? null : threadSelect.value;
      state.zoomPath = [];
      rebuild();
    });
  }

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 100);
  });

  MR.header();
  const extra = [];
  if (D.pruned) extra.push(['Frames', 'The smallest frames are folded into "other" nodes to keep the page fast (at most ' + MR.formatCount(D.node_budget) + ' frames are kept).']);
  MR.renderStats(extra);

  let chart = null;
  if (D.temporal) {
    const T = D.temporal;
    const peaks = D.memory.unit_peaks;
    const sets = [[trees.main, T.intervals]];
    if (trees.noImports && T.no_imports_intervals) sets.push([trees.noImports, T.no_imports_intervals]);
    // Values of every node for units n..e: live at the highest point of the range, or
    // allocated in it and not freed before its end.
    const applyRange = (n, e, a, b) => {
      let point = -1;
      if (T.mode === 'peak') {
        point = n;
        for (let u = n; u <= e; u++) if (peaks[u] >= peaks[point]) point = u;
      }
      for (const [tree, intervals] of sets) {
        const len = tree.nodes.length;
        const value = new Float64Array(len);
        const count = new Float64Array(len);
        for (const iv of intervals) {
          const from = iv[1];
          const to = iv[2] < 0 ? Infinity : iv[2];
          const take = T.mode === 'peak' ? from <= point && point < to : from >= n && from <= e && to > e;
          if (take) {
            value[iv[0]] += iv[4];
            count[iv[0]] += iv[3];
          }
        }
        for (let i = len - 1; i > 0; i--) {
          value[tree.parent[i]] += value[i];
          count[tree.parent[i]] += count[i];
        }
        for (let i = 0; i < len; i++) {
          tree.nodes[i].value = value[i];
          tree.nodes[i].count = count[i];
        }
      }
      const t0 = D.memory.start_ms;
      const span = MR.formatDuration(Math.round(a - t0)) + ' to ' + MR.formatDuration(Math.round(b - t0));
      selectionInfo.textContent = T.mode === 'peak'
        ? 'Selected ' + span + ': allocations live at its highest heap (' + MR.formatBytes(peaks[point]) + ', highlighted), ' + MR.formatBytes(trees.main.nodes[0].value) + ' shown.'
        : 'Selected ' + span + ': allocations made in it and not freed by its end, ' + MR.formatBytes(trees.main.nodes[0].value) + ' shown.';
      if (chart) chart.setHighlight(point);
      rebuild();
    };
    chart = MR.MemoryChart(document.getElementById('memory-chart'), { brush: true, onRange: applyRange });
    const [t0, t1] = chart.range();
    const [n, e] = chart.unitsFor(t0, t1);
    applyRange(n, e, t0, t1);
  } else {
    chart = MR.MemoryChart(document.getElementById('memory-chart'), {});
    rebuild();
  }
  // For tests and scripts: the current state, read-only.
  window.memrayFlamegraph = {
    zoomed: () => (zoomed === view ? null : label(zoomed)),
    frames: () => drawn.length,
    total: () => view.value,
  };
})();
