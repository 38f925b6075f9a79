// The word -> region alignment drawn over an image: one box per region that won a word's
// max, colour-coded, with a legend that highlights a region's words on hover or focus.

import { el, fixed, isNum, pct } from './dom.js';

export const PALETTE = [
  '#d62728', '#1f77b4', '#2ca02c', '#ff7f0e', '#9467bd',
  '#e377c2', '#8c564b', '#17becf', '#bcbd22', '#7f7f7f',
];


export function normBox(box) {
  if (!Array.isArray(box) || box.length !== 4 || !box.every(isNum)) return null;
  const [a, b, c, d] = box.map((v) => Math.min(1, Math.max(0, v)));
  return [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)];
}

/** Group explain entries by matched region: one box per distinct region, one colour per box. */
export function groupByRegion(explain) {
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

export function highlight(overlay, legend, key) {
  overlay.classList.toggle('has-active', key != null);
  for (const node of overlay.children) node.classList.toggle('active', node.dataset.key === key);
  for (const node of legend.children) node.classList.toggle('active', key != null && node.dataset.key === key);
}

/** Draw the matched regions into `overlay` (positions in % of the image) and fill `legend`. */
export function renderAlignment(overlay, legend, explain, ids) {
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
