// Single-page UI for the CHAN retrieval service: text -> images, image -> captions,
// and per-word region alignment drawn over the images.

import { normBox, renderAlignment } from './alignment.js';
import { api, el, fixed, isNum, pct, plural, setStatus, showTimings } from './dom.js';

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

function showError(message) {
  ui.error.textContent = message || '';
  ui.error.hidden = !message;
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
