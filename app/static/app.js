// Single-page UI for the CHAN retrieval service: text -> images, image -> captions,
// and per-word region alignment drawn over the images.

const PALETTE = [
  '#d62728', '#1f77b4', '#2ca02c', '#ff7f0e', '#9467bd',
  '#e377c2', '#8c564b', '#17becf', '#bcbd22', '#7f7f7f',
];
const ACCEPTED_TYPES = ['image/jpeg', 'image/png', 'image/webp'];

const $ = (id) => document.getElementById(id);
const ui = {
  info: $('info'), error: $('error'),
  textForm: $('text-form'), textQuery: $('text-query'), textK: $('text-k'),
  imageResults: $('image-results'), imageHeading: $('image-results-heading'),
  imageStatus: $('image-status'), timings: $('timings'), imageGrid: $('image-grid'),
  drop: $('drop-zone'), file: $('image-file'), captionK: $('caption-k'),
  captionLayout: $('caption-layout'), queryWrap: $('query-wrap'), queryStage: $('query-stage'),
  queryImage: $('query-image'), queryRegions: $('query-regions'), queryOverlay: $('query-overlay'),
  queryLabel: $('query-label'), selectedCaption: $('selected-caption'), queryLegend: $('query-legend'),
  captionResults: $('caption-results'), captionHeading: $('caption-results-heading'),
  captionStatus: $('caption-status'), captionTimings: $('caption-timings'), captionList: $('caption-list'),
  dialog: $('alignment'), close: $('close-alignment'), alignTitle: $('alignment-title'),
  alignQuery: $('alignment-query'), alignImage: $('alignment-image'), alignOverlay: $('alignment-overlay'),
  alignLegend: $('alignment-legend'), alignMeta: $('alignment-meta'), captionsForImage: $('captions-for-image'),
};

// ---------- small helpers ----------

/** Create an element; strings become text nodes, never markup. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'class') node.className = value;
    else if (key === 'style') for (const [p, v] of Object.entries(value)) node.style.setProperty(p, v);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
const fixed = (v, digits = 3) => (isNum(v) ? v.toFixed(digits) : '—');
const plural = (n, word) => `${Math.round(n).toLocaleString('en-US')} ${word}${n === 1 ? '' : 's'}`;
const pct = (v) => `${(v * 100).toFixed(3)}%`;

function showError(message) {
  ui.error.textContent = message || '';
  ui.error.hidden = !message;
}

function setStatus(node, text, busy = false) {
  node.replaceChildren(busy ? el('span', { class: 'spinner', 'aria-hidden': 'true' }) : '', text || '');
  node.hidden = !text;
}

function timingText(data) {
  const parts = Object.entries(data.timings_ms || {})
    .filter(([, v]) => isNum(v))
    .map(([k, v]) => `${k.replace(/_ms$/, '').replace(/_/g, ' ')} ${v.toFixed(1)} ms`);
  if (isNum(data.candidates)) parts.push(plural(data.candidates, 'candidate'));
  if (typeof data.exhaustive === 'boolean') parts.push(data.exhaustive ? 'exhaustive' : 'shortlisted');
  return parts.join(' · ');
}

function showTimings(node, data) {
  node.textContent = timingText(data);
  node.hidden = !node.textContent;
}

/** Ask for the API key once a route answers 401; the cookie also authorises thumbnails. */
function askForApiKey() {
  const key = window.prompt('This service needs an API key:');
  if (!key) return false;
  document.cookie = `chan_api_key=${encodeURIComponent(key.trim())}; path=/; SameSite=Strict`;
  return true;
}

/** Fetch JSON; failures throw an Error whose message is fit to show the user. */
async function api(path, options = {}, retried = false) {
  const { method = 'GET', json, form, signal } = options;
  const init = { method, signal, headers: { Accept: 'application/json' } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers['Content-Type'] = 'application/json';
  } else if (form) {
    init.body = form;
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
    throw new Error('Network error: the server could not be reached.');
  }
  let body = null;
  try {
    body = await res.json();
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
  }
  if (res.status === 401 && !retried && askForApiKey()) return api(path, options, true);
  if (!res.ok) {
    const msg = body?.error?.message;
    throw new Error(typeof msg === 'string' && msg ? msg : `Request failed (HTTP ${res.status}).`);
  }
  if (!body || typeof body !== 'object') throw new Error('The server sent an unreadable response.');
  return body;
}

/** One search at a time per results area: a new search aborts the previous one. */
function searchChannel(container, status, reveal = container) {
  let current = null;
  return async (request, render) => {
    current?.abort();
    const ctrl = new AbortController();
    current = ctrl;
    showError('');
    reveal.hidden = false;
    container.setAttribute('aria-busy', 'true');
    setStatus(status, 'Searching…', true);
    try {
      const data = await request(ctrl.signal);
      if (!ctrl.signal.aborted) render(data);
    } catch (err) {
      if (!ctrl.signal.aborted) {
        showError(err?.message || String(err));
        setStatus(status, 'Search failed.');
      }
    } finally {
      if (current === ctrl) {
        current = null;
        container.setAttribute('aria-busy', 'false');
      }
    }
  };
}

// ---------- region alignment ----------

function normBox(box) {
  if (!Array.isArray(box) || box.length !== 4 || !box.every(isNum)) return null;
  const [a, b, c, d] = box.map((v) => Math.min(1, Math.max(0, v)));
  return [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)];
}

/** Group explain entries by matched region: one box per distinct region, one colour per box. */
function groupByRegion(explain) {
  const groups = new Map();
  const entries = (Array.isArray(explain) ? explain : []).map((entry) => {
    const box = normBox(entry?.box);
    if (!box) return { entry, group: null };
    const key = isNum(entry.region) ? `r${entry.region}` : `b${box.join(',')}`;
    let group = groups.get(key);
    if (!group) {
      group = { key, box, region: entry.region, color: PALETTE[groups.size % PALETTE.length], words: [] };
      groups.set(key, group);
    }
    group.words.push(String(entry.token ?? ''));
    return { entry, group };
  });
  return { groups: [...groups.values()], entries };
}

function highlight(overlay, legend, key) {
  overlay.classList.toggle('has-active', key != null);
  for (const node of overlay.children) node.classList.toggle('active', node.dataset.key === key);
  for (const node of legend.children) node.classList.toggle('active', key != null && node.dataset.key === key);
}

/** Draw the matched regions into `overlay` (positions in % of the image) and fill `legend`. */
function renderAlignment(overlay, legend, explain, ids) {
  const { groups, entries } = groupByRegion(explain);
  const hover = (key) => () => highlight(overlay, legend, key);
  overlay.classList.remove('has-active');
  overlay.replaceChildren(...groups.map((g) => {
    const [x0, y0, x1, y1] = g.box;
    const words = g.words.join(', ');
    const box = el('div', {
      class: 'region-box', 'data-testid': ids.box, 'data-key': g.key, 'data-region': g.region,
      'data-words': words, title: words,
      style: { left: pct(x0), top: pct(y0), width: pct(x1 - x0), height: pct(y1 - y0), '--c': g.color },
    }, el('span', { class: 'region-label', text: words }));
    box.addEventListener('mouseenter', hover(g.key));
    box.addEventListener('mouseleave', hover(null));
    return box;
  }));
  if (!entries.length) {
    legend.replaceChildren(el('li', { class: 'legend-empty', text: 'No word alignment returned.' }));
    return;
  }
  legend.replaceChildren(...entries.map(({ entry, group }) => {
    const token = String(entry?.token ?? '');
    const item = el('li', {
      class: group ? 'legend-item' : 'legend-item no-box', tabindex: 0,
      'data-testid': ids.legend, 'data-key': group?.key, 'data-token': token,
      'aria-label': `${token}: similarity ${fixed(entry?.similarity)}${group ? '' : ', no region box'}`,
      style: group ? { '--c': group.color } : null,
    },
    el('span', { class: 'swatch', 'aria-hidden': 'true' }),
    el('span', { class: 'word', text: token }),
    el('span', { class: 'sim', text: fixed(entry?.similarity) }));
    if (group) {
      for (const type of ['mouseenter', 'focus']) item.addEventListener(type, hover(group.key));
      for (const type of ['mouseleave', 'blur']) item.addEventListener(type, hover(null));
    }
    return item;
  }));
}

// ---------- text -> images ----------

const runImageSearch = searchChannel(ui.imageResults, ui.imageStatus);

function imageTile(hit, index, text) {
  const rank = hit.rank ?? index + 1;
  const id = String(hit.image_id ?? '');
  const button = el('button', {
    type: 'button', class: 'tile', 'data-testid': 'image-hit', 'data-image-id': id,
    'aria-label': `Rank ${rank}: ${id}, score ${fixed(hit.score)}. Show word alignment`,
  },
  el('img', { src: hit.thumbnail_url || hit.image_url, alt: '', loading: 'lazy', decoding: 'async' }),
  el('span', { class: 'tile-meta' },
    el('span', { class: 'rank', text: `#${rank}` }),
    el('span', { class: 'score', text: fixed(hit.score) })));
  button.addEventListener('click', () => openAlignment(hit, text, button));
  return el('li', {}, button);
}

ui.textForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.textQuery.value.trim();
  if (!text) {
    showError('Type a description to search for.');
    ui.textQuery.focus();
    return;
  }
  const k = Number(ui.textK.value) || 12;
  ui.imageGrid.replaceChildren();
  ui.timings.hidden = true;
  runImageSearch(
    (signal) => api('/v1/search/images', { method: 'POST', json: { text, k, explain: true }, signal }),
    (data) => {
      const hits = Array.isArray(data.hits) ? data.hits : [];
      setStatus(ui.imageStatus, hits.length ? `${plural(hits.length, 'image')} for “${text}”` : 'No results');
      showTimings(ui.timings, data);
      ui.imageGrid.replaceChildren(...hits.map((hit, i) => imageTile(hit, i, text)));
    },
  );
});

// ---------- detail view ----------

let detailHit = null;
let returnFocusTo = null;

function renderMeta(hit) {
  const rows = [];
  if (hit.uri) rows.push(['uri', hit.uri]);
  if (hit.metadata && typeof hit.metadata === 'object') rows.push(...Object.entries(hit.metadata));
  ui.alignMeta.replaceChildren(...rows.slice(0, 16).flatMap(([key, value]) => {
    let text = typeof value === 'string' ? value : JSON.stringify(value);
    if (text && text.length > 200) text = `${text.slice(0, 199)}…`;
    return [el('dt', { text: key }), el('dd', { text: text ?? '' })];
  }));
}

function openAlignment(hit, text, tile) {
  detailHit = hit;
  returnFocusTo = tile;
  const id = String(hit.image_id ?? '');
  ui.alignTitle.textContent = `#${hit.rank ?? ''} · ${id}`;
  ui.alignQuery.textContent = `Query “${text}” · score ${fixed(hit.score)}`;
  ui.alignImage.removeAttribute('src');
  ui.alignImage.alt = `Image ${id}`;
  const src = hit.image_url || hit.thumbnail_url;
  if (src) ui.alignImage.src = src;
  renderAlignment(ui.alignOverlay, ui.alignLegend, hit.explain, { box: 'region-box', legend: 'word-legend' });
  renderMeta(hit);
  ui.captionsForImage.disabled = !id;
  if (ui.dialog.open) return;
  if (typeof ui.dialog.showModal === 'function') ui.dialog.showModal();
  else ui.dialog.setAttribute('open', '');
  ui.close.focus();
}

function closeAlignment() {
  if (!ui.dialog.open) return;
  if (typeof ui.dialog.close === 'function') ui.dialog.close();
  else {
    ui.dialog.removeAttribute('open');
    ui.dialog.dispatchEvent(new Event('close'));
  }
}

ui.dialog.addEventListener('close', () => {
  const target = returnFocusTo;
  returnFocusTo = null;
  if (target?.isConnected) target.focus();
});
ui.close.addEventListener('click', closeAlignment);
ui.dialog.addEventListener('click', (event) => {
  if (event.target === ui.dialog) closeAlignment(); // click on the backdrop
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && ui.dialog.open) {
    event.preventDefault();
    closeAlignment();
  }
});
ui.captionsForImage.addEventListener('click', () => {
  const hit = detailHit;
  if (!hit?.image_id) return;
  returnFocusTo = null;
  closeAlignment();
  ui.file.value = '';
  runCaptionQuery({ imageId: String(hit.image_id), previewUrl: hit.image_url || hit.thumbnail_url, label: `Gallery image ${hit.image_id}` });
  ui.captionHeading.focus({ preventScroll: true });
  ui.captionLayout.scrollIntoView({ block: 'start' });
});

// ---------- image -> captions ----------

const runCaptionSearch = searchChannel(ui.captionResults, ui.captionStatus, ui.captionLayout);
let lastCaptionQuery = null;
let objectUrl = null;

function drawQueryBoxes(boxes) {
  ui.queryRegions.replaceChildren(...(Array.isArray(boxes) ? boxes : []).map((raw, i) => {
    const b = normBox(raw);
    if (!b) return null;
    return el('div', {
      class: 'query-box', 'data-testid': 'query-box', 'data-region': i,
      style: { left: pct(b[0]), top: pct(b[1]), width: pct(b[2] - b[0]), height: pct(b[3] - b[1]) },
    });
  }).filter(Boolean));
}

function selectCaption(hit, item) {
  for (const li of ui.captionList.children) {
    li.classList.toggle('selected', li === item);
    li.querySelector('.cap-select')?.setAttribute('aria-pressed', String(li === item));
  }
  ui.queryStage.classList.add('has-selection');
  ui.selectedCaption.textContent = `#${hit.rank ?? ''} “${hit.text ?? ''}”`;
  renderAlignment(ui.queryOverlay, ui.queryLegend, hit.explain,
    { box: 'caption-region-box', legend: 'caption-word-legend' });
  ui.queryWrap.scrollIntoView({ block: 'nearest' });
}

function captionItem(hit, index, query) {
  const rank = hit.rank ?? index + 1;
  const imageId = hit.image_id == null ? null : String(hit.image_id);
  const item = el('li', { class: 'caption-hit', 'data-testid': 'caption-hit', 'data-caption-id': hit.caption_id },
    el('button', { type: 'button', class: 'cap-select', 'aria-pressed': 'false' },
      el('span', { class: 'rank', text: `#${rank}` }),
      el('span', { class: 'score', text: fixed(hit.score) }),
      el('span', { class: 'cap-text', text: hit.text ?? '' })),
    imageId && el('a', {
      class: 'cap-image', 'data-testid': 'caption-image-link', target: '_blank', rel: 'noopener',
      href: `/v1/images/${encodeURIComponent(imageId)}`, 'aria-label': `Open image ${imageId}`,
    }, 'image ', el('code', { text: imageId })),
    imageId && imageId === query.imageId && el('span', { class: 'badge', text: 'same image' }));
  item.addEventListener('click', (event) => {
    if (!event.target.closest('a')) selectCaption(hit, item);
  });
  return item;
}

function runCaptionQuery(query) {
  lastCaptionQuery = query;
  if (objectUrl && query.previewUrl !== objectUrl) {
    URL.revokeObjectURL(objectUrl);
    objectUrl = null;
  }
  const k = Number(ui.captionK.value) || 10;
  if (ui.queryImage.getAttribute('src') !== query.previewUrl) {
    ui.queryImage.removeAttribute('src');
    if (query.previewUrl) ui.queryImage.src = query.previewUrl;
  }
  ui.queryImage.alt = query.label;
  ui.queryLabel.textContent = query.label;
  ui.selectedCaption.textContent = '';
  ui.queryStage.classList.remove('has-selection');
  for (const node of [ui.queryRegions, ui.queryOverlay, ui.queryLegend, ui.captionList]) node.replaceChildren();
  ui.captionTimings.hidden = true;
  runCaptionSearch(
    (signal) => {
      if (query.imageId) {
        return api('/v1/search/captions', { method: 'POST', json: { image_id: query.imageId, k, explain: true }, signal });
      }
      const form = new FormData();
      form.append('file', query.file, query.file.name || 'query-image');
      form.append('k', String(k));
      form.append('explain', 'true');
      return api('/v1/search/captions', { method: 'POST', form, signal });
    },
    (data) => {
      const hits = Array.isArray(data.hits) ? data.hits : [];
      drawQueryBoxes(data.query_boxes);
      setStatus(ui.captionStatus, hits.length ? `${plural(hits.length, 'caption')}. Select one to see its word regions.` : 'No results');
      showTimings(ui.captionTimings, data);
      ui.captionList.replaceChildren(...hits.map((hit, i) => captionItem(hit, i, query)));
    },
  );
}

function useFile(file) {
  if (!ACCEPTED_TYPES.includes(file.type)) {
    showError(`Unsupported file type${file.type ? ` (${file.type})` : ''}: choose a JPEG, PNG or WebP image.`);
    return;
  }
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(file);
  runCaptionQuery({ file, previewUrl: objectUrl, label: `Uploaded image: ${file.name || 'unnamed'}` });
}

ui.file.addEventListener('change', () => {
  const file = ui.file.files?.[0];
  if (file) useFile(file);
});
ui.captionK.addEventListener('change', () => {
  if (lastCaptionQuery) runCaptionQuery(lastCaptionQuery);
});
for (const type of ['dragenter', 'dragover']) {
  ui.drop.addEventListener(type, (event) => {
    event.preventDefault();
    ui.drop.classList.add('dragging');
  });
}
for (const type of ['dragleave', 'dragend', 'drop']) {
  ui.drop.addEventListener(type, () => ui.drop.classList.remove('dragging'));
}
ui.drop.addEventListener('drop', (event) => {
  event.preventDefault();
  const file = event.dataTransfer?.files?.[0];
  if (file) useFile(file);
});
// A file dropped anywhere else must not navigate away from the page.
for (const type of ['dragover', 'drop']) window.addEventListener(type, (event) => event.preventDefault());

// ---------- header ----------

async function loadInfo() {
  try {
    const info = await api('/v1/info');
    const index = info.index || {};
    const model = info.model || {};
    const parts = [];
    if (isNum(index.images)) parts.push(plural(index.images, 'image'));
    if (isNum(index.captions)) parts.push(plural(index.captions, 'caption'));
    const name = model.name ?? model.id ?? model.version;
    if (typeof name === 'string' && name) parts.push(name);
    ui.info.textContent = parts.length ? parts.join(' · ') : 'Index ready';
  } catch {
    ui.info.textContent = 'Index info unavailable';
  }
}

loadInfo();
