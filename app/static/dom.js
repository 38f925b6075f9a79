// DOM and HTTP helpers of the page: elements from data (never markup), number formats,
// status lines, timings, and the JSON API client (it asks for an API key on a 401).

/** Create an element; strings become text nodes, never markup. */
export function el(tag, attrs = {}, ...children) {
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

export const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
export const fixed = (v, digits = 3) => (isNum(v) ? v.toFixed(digits) : '—');
export const plural = (n, word) => `${Math.round(n).toLocaleString('en-US')} ${word}${n === 1 ? '' : 's'}`;
export const pct = (v) => `${(v * 100).toFixed(3)}%`;

export function setStatus(node, text, busy = false) {
  node.replaceChildren(busy ? el('span', { class: 'spinner', 'aria-hidden': 'true' }) : '', text || '');
  node.hidden = !text;
}

export function timingText(data) {
  const parts = Object.entries(data.timings_ms || {})
    .filter(([, v]) => isNum(v))
    .map(([k, v]) => `${k.replace(/_ms$/, '').replace(/_/g, ' ')} ${v.toFixed(1)} ms`);
  if (isNum(data.candidates)) parts.push(plural(data.candidates, 'candidate'));
  if (typeof data.exhaustive === 'boolean') parts.push(data.exhaustive ? 'exhaustive' : 'shortlisted');
  return parts.join(' · ');
}

export function showTimings(node, data) {
  node.textContent = timingText(data);
  node.hidden = !node.textContent;
}

/** Ask for the API key once a route answers 401; the cookie also authorises thumbnails. */
export function askForApiKey() {
  const key = window.prompt('This service needs an API key:');
  if (!key) return false;
  document.cookie = `chan_api_key=${encodeURIComponent(key.trim())}; path=/; SameSite=Strict`;
  return true;
}

/** Fetch JSON; failures throw an Error whose message is fit to show the user. */
export async function api(path, options = {}, retried = false) {
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
