// The allocation table: sortable by any column, filtered by a search string, shown a
// page at a time so that captures with many locations stay fast.
(function () {
  'use strict';
  const D = MR.data;
  const S = D.strings;
  const PAGE = 100;
  const nativeLocations = new Set(D.native_locations || []);
  const rows = D.rows.map((r) => ({ thread: S[r[0]], size: r[1], count: r[2], allocator: S[r[3]], location: S[r[4]],
    native: nativeLocations.has(r[4]) }));
  if (nativeLocations.size) document.getElementById('native-legend').hidden = false;
  const keys = ['thread', 'size', 'count', 'allocator', 'location'];
  const state = { col: 1, desc: true, filter: '', page: 0 };
  const tbody = document.querySelector('#allocations tbody');
  const headers = Array.from(document.querySelectorAll('#allocations th'));
  const filterInput = document.getElementById('filter');
  const rowCount = document.getElementById('row-count');
  const pageInfo = document.getElementById('page-info');
  const prev = document.getElementById('prev-page');
  const next = document.getElementById('next-page');
  let shown = rows;

  function refilter() {
    const f = state.filter;
    shown = f === '' ? rows.slice() : rows.filter((r) =>
      r.thread.toLowerCase().includes(f) || r.allocator.toLowerCase().includes(f) || r.location.toLowerCase().includes(f));
    resort();
  }

  function resort() {
    const k = keys[state.col];
    const dir = state.desc ? -1 : 1;
    const numeric = k === 'size' || k === 'count';
    shown.sort((a, b) => {
      const x = a[k];
      const y = b[k];
      const c = numeric ? x - y : (x < y ? -1 : x > y ? 1 : 0);
      return c * dir || (b.size - a.size);
    });
    state.page = 0;
    render();
  }

  function render() {
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * PAGE;
    const end = Math.min(start + PAGE, shown.length);
    tbody.textContent = '';
    const frag = document.createDocumentFragment();
    for (let i = start; i < end; i++) {
      const r = shown[i];
      const tr = document.createElement('tr');
      const cell = (text, cls, title) => {
        const td = MR.el('td', cls, text);
        if (title) td.title = title;
        tr.appendChild(td);
      };
      cell(r.thread);
      cell(MR.formatBytes(r.size), 'num', MR.formatCount(r.size) + ' bytes');
      cell(MR.formatCount(r.count), 'num');
      cell(r.allocator);
      cell(r.location, r.native ? 'location native' : 'location', r.native ? 'native frame' : '');
      frag.appendChild(tr);
    }
    tbody.appendChild(frag);
    rowCount.textContent = shown.length === 0 ? 'No matching rows' :
      'Rows ' + MR.formatCount(start + 1) + '–' + MR.formatCount(end) + ' of ' + MR.formatCount(shown.length) +
      (shown.length !== rows.length ? ' (filtered from ' + MR.formatCount(rows.length) + ')' : '');
    pageInfo.textContent = 'Page ' + (state.page + 1) + ' of ' + pages;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    headers.forEach((h, i) => {
      h.setAttribute('aria-sort', i === state.col ? (state.desc ? 'descending' : 'ascending') : 'none');
    });
  }

  headers.forEach((h, i) => {
    h.tabIndex = 0;
    const activate = () => {
      if (state.col === i) state.desc = !state.desc;
      else {
        state.col = i;
        state.desc = h.dataset.type === 'num';
      }
      resort();
    };
    h.addEventListener('click', activate);
    h.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        activate();
      }
    });
  });
  filterInput.addEventListener('input', () => {
    state.filter = filterInput.value.trim().toLowerCase();
    refilter();
  });
  prev.addEventListener('click', () => {
    state.page--;
    render();
  });
  next.addEventListener('click', () => {
    state.page++;
    render();
  });

  MR.header();
  MR.renderStats([['Rows', MR.formatCount(rows.length) + ' allocation site' + (rows.length === 1 ? '' : 's')]]);
  MR.MemoryChart(document.getElementById('memory-chart'), {});
  refilter();
})();
