/* camscope report explorer (camscope/report/assets/explore.js).
 *
 * Progressive enhancement of report.html: reads the JSON block #camscope-data and builds the
 * explorer into the hidden section #camscope-explorer. Data reaches the page only through
 * textContent, setAttribute and createElement (never as HTML). No network, no storage.
 */
(() => {
  'use strict';
  const dataNode = document.getElementById('camscope-data');
  const mount = document.getElementById('camscope-explorer');
  if (!dataNode || !mount) return;
  const D = JSON.parse(dataNode.textContent);
  const photos = D.photos || [];
  if (!photos.length || !(D.methods || []).length) return;

  // ---- small helpers ----------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of kids) {
      if (c !== null && c !== undefined) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return e;
  }
  function b64bytes(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  const isNum = (x) => typeof x === 'number' && isFinite(x);
  const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
  const vkey = (m, s) => (s ? m + '+' + s : m);
  const vlabel = (k) => (D.variants[k] ? D.variants[k].label : k);
  const lut = b64bytes(D.lut);
  const metricInfo = {};
  for (const m of D.metrics) metricInfo[m.key] = m;

  function fmt(key, v, deg) {
    if (key === 'degenerate') return deg || (v ? 'yes' : 'no');
    if (!isNum(v)) return '–';
    if (key === 'increase_in_confidence') return v > 0 ? 'yes' : 'no';
    if (key === 'pointing_game') return v > 0 ? 'hit' : 'miss';
    if (key === 'energy_pg' || key === 'top5_energy' || key === 'top10_energy') return (100 * v).toFixed(1) + '%';
    if (key === 'average_drop') return v.toFixed(1);
    return v.toFixed(3);
  }

  // ---- maps: greyscale PNGs (data: URIs, readable by a canvas even under file://) ----------
  const mapCache = new Map();
  function loadMap(i, key) {
    const id = i + '\u0000' + key;
    if (mapCache.has(id)) return mapCache.get(id);
    const b64 = photos[i].maps[key];
    const pr = !b64 ? Promise.resolve(null) : new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => {
        const w = img.naturalWidth, h = img.naturalHeight;
        const c = document.createElement('canvas');
        c.width = w; c.height = h;
        const ctx = c.getContext('2d', { willReadFrequently: true });
        ctx.drawImage(img, 0, 0);
        const px = ctx.getImageData(0, 0, w, h).data;
        const values = new Uint8Array(w * h);
        for (let j = 0; j < values.length; j++) values[j] = px[4 * j];
        resolve({ w, h, values });
      };
      img.onerror = () => reject(new Error('map ' + key + ' of photo ' + (i + 1) + ' could not be decoded'));
      img.src = 'data:image/png;base64,' + b64;
    });
    mapCache.set(id, pr);
    return pr;
  }

  // Bilinear upsampling of the values (pixel centres aligned), then the run's colour map.
  function paint(canvas, map) {
    const k = Math.max(1, Math.floor(256 / Math.max(map.w, map.h)));
    const W = map.w * k, H = map.h * k;
    if (canvas.width !== W) canvas.width = W;
    if (canvas.height !== H) canvas.height = H;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    const img = ctx.createImageData(W, H);
    const out = img.data, v = map.values, mw = map.w, mh = map.h;
    for (let y = 0; y < H; y++) {
      const sy = clamp((y + 0.5) / k - 0.5, 0, mh - 1);
      const y0 = Math.floor(sy), y1 = Math.min(mh - 1, y0 + 1), fy = sy - y0;
      for (let x = 0; x < W; x++) {
        const sx = clamp((x + 0.5) / k - 0.5, 0, mw - 1);
        const x0 = Math.floor(sx), x1 = Math.min(mw - 1, x0 + 1), fx = sx - x0;
        const top = v[y0 * mw + x0] * (1 - fx) + v[y0 * mw + x1] * fx;
        const bot = v[y1 * mw + x0] * (1 - fx) + v[y1 * mw + x1] * fx;
        const q = Math.round(top * (1 - fy) + bot * fy);
        const o = 4 * (y * W + x);
        out[o] = lut[3 * q]; out[o + 1] = lut[3 * q + 1]; out[o + 2] = lut[3 * q + 2]; out[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  // ---- state ---------------------------------------------------------------------------
  const methods = D.methods.map((m) => m.key);
  const smoothings = [''].concat(D.smoothings || []);
  const S = {
    cur: 0,
    order: photos.map((_, i) => i),
    method: methods[0],
    smooth: '',
    cmp: false,
    cmpMethod: methods.length > 1 ? methods[1] : methods[0],
    cmpSmooth: methods.length > 1 || smoothings.length < 2 ? '' : smoothings[1],
    opacity: isNum(D.alpha) ? D.alpha : 0.5,
    divider: 0.5,
    filters: { misclassified: false, degenerate: false, low: false },
    sort: 'name',
    desc: false,
  };
  const low = (p) => isNum(p.min_spearman) && p.min_spearman < D.low_agreement;
  const tests = {
    misclassified: (p) => p.correct === false,
    degenerate: (p) => Object.keys(p.degenerate).length > 0,
    low,
  };

  // ---- the explorer's DOM --------------------------------------------------------------
  const count = (t) => photos.filter(t).length;
  const filterBoxes = {};
  function filterBox(name, text) {
    const box = el('input', { type: 'checkbox', id: 'ex-f-' + name, 'data-filter': name });
    filterBoxes[name] = box;
    return el('label', { for: 'ex-f-' + name }, box, ' ' + text + ' (' + count(tests[name]) + ')');
  }
  // The metrics offered for sorting, one <optgroup> per category of the metric registry.
  function metricGroups() {
    const groups = new Map();
    for (const m of D.metrics) {
      const cat = m.category || 'map properties';
      if (!groups.has(cat)) groups.set(cat, []);
      groups.get(cat).push(el('option', { value: 'm:' + m.key },
        m.label + (m.better ? ' (' + m.better + ' is better)' : '')));
    }
    return Array.from(groups, ([cat, opts]) => el('optgroup', { label: cat }, ...opts));
  }
  const sortSel = el('select', { id: 'ex-sort' },
    el('option', { value: 'name' }, 'file name'),
    el('option', { value: 'prob' }, 'probability of the prediction'),
    el('option', { value: 'agreement' }, 'lowest agreement (Spearman)'),
    ...metricGroups());
  const dirSel = el('select', { id: 'ex-dir', 'aria-label': 'sort direction' },
    el('option', { value: 'asc' }, 'ascending'), el('option', { value: 'desc' }, 'descending'));
  const sortOf = el('span', { class: 'ex-val', id: 'ex-sort-of' });
  const countNode = el('span', { class: 'ex-count', id: 'ex-count', 'aria-live': 'polite' });
  const grid = el('div', { class: 'ex-grid', id: 'ex-grid', 'aria-label': 'photos' });

  const methodSel = (id, label) => el('select', { id, 'aria-label': label },
    ...D.methods.map((m) => el('option', { value: m.key }, m.label)));
  const smoothSel = (id, label) => el('select', { id, 'aria-label': label },
    ...smoothings.map((s) => el('option', { value: s }, s ? '+' + s : 'plain')));
  const mSel = methodSel('ex-method', 'method'), sSel = smoothSel('ex-smooth', 'smoothing');
  const cBox = el('input', { type: 'checkbox', id: 'ex-compare' });
  const cmSel = methodSel('ex-cmethod', 'compared method'), csSel = smoothSel('ex-csmooth', 'compared smoothing');
  const opacity = el('input', { type: 'range', id: 'ex-opacity', min: 0, max: 100, step: 5,
    value: Math.round(100 * S.opacity), 'aria-label': 'heat-map opacity' });
  const opacityVal = el('span', { id: 'ex-opacity-val' });

  const title = el('h3', { id: 'ex-title' });
  const sub = el('p', { class: 'ex-metrics', id: 'ex-sub' });
  const photoImg = el('img', { class: 'ex-photo', id: 'ex-photo', alt: '' });
  const heatA = el('canvas', { class: 'ex-heat', id: 'ex-heat-a', width: 1, height: 1 });
  const heatB = el('canvas', { class: 'ex-heat', id: 'ex-heat-b', width: 1, height: 1, hidden: true });
  const empty = el('div', { class: 'ex-empty', id: 'ex-empty', hidden: true });
  const handle = el('div', { class: 'ex-handle', id: 'ex-handle', role: 'slider', tabindex: 0,
    'aria-label': 'swipe divider', 'aria-valuemin': 0, 'aria-valuemax': 100 });
  const divider = el('div', { class: 'ex-divider', id: 'ex-divider', hidden: true }, handle);
  const sideA = el('span', { class: 'ex-side a', hidden: true }), sideB = el('span', { class: 'ex-side b', hidden: true });
  const stage = el('div', { class: 'ex-stage', id: 'ex-stage' }, photoImg, heatA, heatB, empty, divider, sideA, sideB);
  const readout = el('p', { class: 'ex-readout', id: 'ex-readout' });
  const metricsA = el('p', { class: 'ex-metrics', id: 'ex-metrics-a' });
  const metricsB = el('p', { class: 'ex-metrics', id: 'ex-metrics-b', hidden: true });
  const details = el('a', { id: 'ex-details' }, 'every map, metric and finding of this photo');

  mount.appendChild(el('h2', {}, 'Explore'));
  mount.appendChild(el('p', { class: 'ex-note' },
    'Maps of the first explained class, drawn from a copy of each map averaged down to at most ',
    String(D.map_max_side || 64), ' pixels a side and quantised to 256 levels (the overlays in the ' +
    'photo sections use the full maps). Next / previous photo: ',
    el('kbd', {}, 'j'), ' / ', el('kbd', {}, 'k'), ' or ', el('kbd', {}, '→'), ' / ', el('kbd', {}, '←'), '.'));
  mount.appendChild(el('div', { class: 'ex-bar' },
    el('fieldset', {}, el('legend', {}, 'Show only'),
      filterBox('misclassified', 'not the file-name label'),
      filterBox('degenerate', 'degenerate map'),
      filterBox('low', 'low agreement: lowest Spearman between two maps < ' + D.low_agreement.toFixed(2))),
    el('span', { class: 'ex-sortby' }, el('label', { for: 'ex-sort' }, 'Sort by '), sortSel, ' ', dirSel, ' ', sortOf),
    countNode));
  mount.appendChild(el('div', { class: 'ex-body' },
    el('div', { class: 'ex-viewer', id: 'ex-viewer' },
      title, sub,
      el('div', { class: 'ex-controls' },
        el('label', {}, 'Map ', mSel, sSel),
        el('label', {}, cBox, ' compare with ', cmSel, csSel),
        el('label', {}, 'Opacity ', opacity, opacityVal)),
      stage, readout, metricsA, metricsB, el('p', { class: 'ex-metrics' }, details)),
    grid));

  // ---- tiles ---------------------------------------------------------------------------
  const tiles = photos.map((p, i) => {
    const section = document.getElementById(p.anchor);
    const still = section ? section.querySelector('.thumb img') : null;
    const src = still ? still.getAttribute('src') : null;
    const flags = [];
    if (p.correct === false) flags.push('not the file-name label');
    if (tests.degenerate(p)) flags.push('degenerate');
    if (low(p)) flags.push('low agreement');
    // loading=lazy is set before src: an image given its src first starts loading at once.
    const t = el('button', { type: 'button', class: 'ex-tile', 'data-index': i, title: p.rel },
      src ? el('img', { loading: 'lazy', decoding: 'async', alt: '', src }) : el('span', { class: 'ex-noimg' }),
      el('span', { class: 'ex-name' }, p.rel),
      el('span', { class: 'ex-flags' }, flags.join(' · ')),
      el('span', { class: 'ex-val' }));
    t.addEventListener('click', () => select(i));
    return { node: t, src, val: t.lastChild };
  });

  function sortValue(p) {
    if (S.sort === 'prob') return p.prob;
    if (S.sort === 'agreement') return p.min_spearman;
    if (S.sort.startsWith('m:')) {
      const row = p.metrics[vkey(S.method, S.smooth)];
      return row ? row[S.sort.slice(2)] : null;
    }
    return null;
  }

  function refreshList() {
    const active = Object.keys(tests).filter((f) => S.filters[f]);
    let order = photos.map((_, i) => i).filter((i) => active.every((f) => tests[f](photos[i])));
    if (S.sort === 'name') {
      if (S.desc) order.reverse();
    } else {
      const val = new Map(order.map((i) => [i, sortValue(photos[i])]));
      order.sort((a, b) => {
        const x = val.get(a), y = val.get(b);
        if (!isNum(x) || !isNum(y)) return isNum(x) ? -1 : isNum(y) ? 1 : a - b;
        return x === y ? a - b : (S.desc ? y - x : x - y);
      });
    }
    S.order = order;
    for (const i of order) {
      const v = sortValue(photos[i]);
      const key = S.sort.startsWith('m:') ? S.sort.slice(2) : S.sort;
      tiles[i].val.textContent = S.sort === 'name' ? '' : fmt(key, v, S.sort === 'm:degenerate'
        ? photos[i].degenerate[vkey(S.method, S.smooth)] : null);
    }
    grid.replaceChildren(...order.map((i) => tiles[i].node));
    countNode.textContent = order.length + ' of ' + photos.length + ' photos';
    sortOf.textContent = S.sort.startsWith('m:') ? '(values of ' + vlabel(vkey(S.method, S.smooth)) + ')' : '';
    select(order.length && !order.includes(S.cur) ? order[0] : S.cur);
  }

  // ---- the viewer ----------------------------------------------------------------------
  let token = 0, ready = false, pointer = null;
  const shown = { a: null, b: null };

  function select(i, focusTile) {
    S.cur = i;
    for (const [j, t] of tiles.entries()) t.node.setAttribute('aria-current', j === i ? 'true' : 'false');
    const node = tiles[i].node;
    if (node.parentNode === grid) {
      if (focusTile) node.focus({ preventScroll: true });
      const top = node.offsetTop, bottom = top + node.offsetHeight;
      if (top < grid.scrollTop) grid.scrollTop = top - 4;
      else if (bottom > grid.scrollTop + grid.clientHeight) grid.scrollTop = bottom - grid.clientHeight + 4;
    }
    showPhoto();
  }

  function step(d) {
    if (!S.order.length) return;
    const pos = S.order.indexOf(S.cur);
    const next = pos < 0 ? 0 : clamp(pos + d, 0, S.order.length - 1);
    const focusTile = document.activeElement && document.activeElement.classList.contains('ex-tile');
    select(S.order[next], focusTile);
  }

  function metricLine(node, p, key) {
    node.replaceChildren();
    const row = p.metrics[key];
    node.appendChild(el('b', {}, vlabel(key) + ': '));
    if (!row) { node.appendChild(document.createTextNode('not measured')); return; }
    const parts = D.metrics.filter((m) => m.key === 'degenerate' ? p.degenerate[key] : isNum(row[m.key]))
      .map((m) => m.label + ' ' + fmt(m.key, row[m.key], p.degenerate[key]));
    node.appendChild(document.createTextNode(parts.join(' · ') || 'not measured'));
  }

  function showPhoto() {
    const p = photos[S.cur];
    const pos = S.order.indexOf(S.cur);
    title.textContent = (pos < 0 ? '–' : pos + 1) + ' / ' + S.order.length + ' · ' + p.rel;
    const bits = ['predicted ' + (p.predicted == null ? '?' : p.predicted) +
      (isNum(p.prob) ? ' (p = ' + p.prob.toFixed(3) + ')' : '')];
    if (p.correct === false) bits.push('not the file-name label' + (p.true_name != null ? ' (' + p.true_name + ')' : ''));
    if (p.correct === true) bits.push('file-name label');
    if (p.target != null && p.target !== p.predicted) bits.push('explained: ' + p.target);
    if (isNum(p.min_spearman)) bits.push('lowest Spearman between maps ' + p.min_spearman.toFixed(2));
    sub.textContent = bits.join(' · ');
    const src = tiles[S.cur].src;
    if (src) { photoImg.setAttribute('src', src); photoImg.hidden = false; } else { photoImg.removeAttribute('src'); photoImg.hidden = true; }
    photoImg.setAttribute('alt', 'photo ' + p.rel);
    details.setAttribute('href', '#' + p.anchor);
    draw();
  }

  function draw() {
    const my = ++token, i = S.cur, p = photos[i];
    const ka = vkey(S.method, S.smooth), kb = vkey(S.cmpMethod, S.cmpSmooth);
    Promise.all([loadMap(i, ka), S.cmp ? loadMap(i, kb) : Promise.resolve(null)]).then(([ma, mb]) => {
      if (my !== token) return;
      const missing = [];
      if (ma) paint(heatA, ma); else missing.push(vlabel(ka));
      if (S.cmp) { if (mb) paint(heatB, mb); else missing.push(vlabel(kb)); }
      shown.a = ma ? { key: ka, map: ma } : null;
      shown.b = S.cmp && mb ? { key: kb, map: mb } : null;
      heatA.hidden = !ma;
      heatB.hidden = !shown.b;
      heatA.setAttribute('data-variant', ma ? ka : '');
      heatB.setAttribute('data-variant', shown.b ? kb : '');
      empty.hidden = !missing.length;
      empty.textContent = missing.length ? 'no ' + missing.join(' and no ') + ' map for this photo' : '';
      const size = (ma || mb);
      stage.style.aspectRatio = size ? size.w + ' / ' + size.h : '1 / 1';
      sideA.textContent = vlabel(ka); sideB.textContent = vlabel(kb);
      sideA.hidden = sideB.hidden = divider.hidden = !S.cmp;
      layout();
      metricLine(metricsA, p, ka);
      metricsB.hidden = !S.cmp;
      if (S.cmp) metricLine(metricsB, p, kb);
      stage.setAttribute('data-shown', ka + (S.cmp ? ' | ' + kb : ''));
      updateReadout();
      if (!ready) {
        ready = true;
        mount.setAttribute('data-ready', 'true');
        if (window.performance && performance.mark) performance.mark('camscope-explorer-ready');
      }
    }).catch((err) => console.error('camscope explorer:', err));
  }

  function layout() {
    heatA.style.opacity = heatB.style.opacity = String(S.opacity);
    opacityVal.textContent = Math.round(100 * S.opacity) + '%';
    const d = 100 * S.divider;
    if (S.cmp) {
      heatA.style.clipPath = 'inset(0 ' + (100 - d) + '% 0 0)';
      heatB.style.clipPath = 'inset(0 0 0 ' + d + '%)';
    } else {
      heatA.style.clipPath = 'none';
    }
    divider.style.left = d + '%';
    handle.setAttribute('aria-valuenow', Math.round(d));
  }

  function updateReadout() {
    const res = (m) => m.w + 'x' + m.h;
    const any = shown.a || shown.b;
    if (!pointer || !any) {
      readout.textContent = any ? 'Move the pointer over the map to read its value (map at ' + res(any.map) + ').' : '';
      return;
    }
    const layer = S.cmp && pointer.fx > S.divider ? shown.b : shown.a;
    if (!layer) { readout.textContent = 'no map here'; return; }
    const m = layer.map;
    const cx = clamp(Math.floor(pointer.fx * m.w), 0, m.w - 1), cy = clamp(Math.floor(pointer.fy * m.h), 0, m.h - 1);
    const v = m.values[cy * m.w + cx] / 255;
    readout.textContent = vlabel(layer.key) + ': value ≈ ' + v.toFixed(2) + ' (map at ' + res(m) + ')';
  }

  // ---- events --------------------------------------------------------------------------
  for (const [name, box] of Object.entries(filterBoxes)) {
    box.addEventListener('change', () => { S.filters[name] = box.checked; refreshList(); });
  }
  sortSel.addEventListener('change', () => { S.sort = sortSel.value; refreshList(); });
  dirSel.addEventListener('change', () => { S.desc = dirSel.value === 'desc'; refreshList(); });
  mSel.addEventListener('change', () => { S.method = mSel.value; S.sort.startsWith('m:') ? refreshList() : draw(); });
  sSel.addEventListener('change', () => { S.smooth = sSel.value; S.sort.startsWith('m:') ? refreshList() : draw(); });
  cBox.addEventListener('change', () => { S.cmp = cBox.checked; draw(); });
  cmSel.addEventListener('change', () => { S.cmpMethod = cmSel.value; draw(); });
  csSel.addEventListener('change', () => { S.cmpSmooth = csSel.value; draw(); });
  opacity.addEventListener('input', () => { S.opacity = Number(opacity.value) / 100; layout(); });

  function moveDivider(clientX) {
    const r = stage.getBoundingClientRect();
    S.divider = clamp((clientX - r.left) / r.width, 0, 1);
    layout();
    updateReadout();
  }
  handle.addEventListener('pointerdown', (e) => {
    e.preventDefault();
    handle.setPointerCapture(e.pointerId);
    handle.focus({ preventScroll: true });
  });
  handle.addEventListener('pointermove', (e) => { if (handle.hasPointerCapture(e.pointerId)) moveDivider(e.clientX); });
  handle.addEventListener('keydown', (e) => {
    const d = { ArrowLeft: -0.05, ArrowDown: -0.05, ArrowRight: 0.05, ArrowUp: 0.05, Home: -1, End: 1 }[e.key];
    if (d === undefined) return;
    e.preventDefault();
    S.divider = clamp(Math.round((S.divider + d) * 100) / 100, 0, 1);
    layout();
    updateReadout();
  });
  stage.addEventListener('pointermove', (e) => {
    const r = stage.getBoundingClientRect();
    pointer = { fx: clamp((e.clientX - r.left) / r.width, 0, 0.999999), fy: clamp((e.clientY - r.top) / r.height, 0, 0.999999) };
    updateReadout();
  });
  stage.addEventListener('pointerleave', () => { pointer = null; updateReadout(); });

  document.addEventListener('keydown', (e) => {
    if (e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey || e.isComposing) return;
    const t = e.target;
    if (t && t.closest && (t.isContentEditable || t.closest('input, select, textarea, [role="slider"], [contenteditable]'))) return;
    const d = { j: 1, ArrowRight: 1, k: -1, ArrowLeft: -1 }[e.key];
    if (d === undefined) return;
    e.preventDefault();
    step(d);
  });

  // ---- start ---------------------------------------------------------------------------
  sSel.value = S.smooth; cmSel.value = S.cmpMethod; csSel.value = S.cmpSmooth;
  mount.hidden = false;
  refreshList();
})();
