// dropforge's gallery page: keyboard triage over the server-rendered tiles. Ratings are sent to
// /api/rate (which writes XMP sidecars) and shown in place, so focus and scroll position stay
// where they were. Every text is set with textContent, never as HTML.

import { post } from './common.js';

const list = document.getElementById('tiles');
const cards = list ? [...list.querySelectorAll('.card')] : [];
const selected = new Set();
const PICKS = 'dropforge.compare';
let picks = JSON.parse(sessionStorage.getItem(PICKS) || '[]');
let focused = 0;
sessionStorage.setItem('dropforge.gallery', location.href); // the detail view's way back

const ratingOf = (card) => ['favorite', 'discard'].find((r) => card.classList.contains(r)) || 'none';

function show(card, rating) {
  card.classList.remove('favorite', 'discard', 'none');
  card.classList.add(rating === 'clear' ? 'none' : rating);
}

async function rate(targets, wanted) {
  // F on a favorite (X on a discard) clears it: the keys toggle.
  const rating = targets.every((c) => ratingOf(c) === wanted) ? 'clear' : wanted;
  const live = rating === 'discard' ? targets : targets.filter((c) => !c.dataset.gone);
  if (!live.length) return;
  const done = await post('/api/rate', {
    rating, items: live.map((c) => ({ root: Number(c.dataset.root), path: c.dataset.path })),
  });
  if (done) live.forEach((c) => show(c, rating));
}

function focus(index) {
  if (!cards.length) return;
  focused = Math.max(0, Math.min(cards.length - 1, index));
  cards.forEach((c, n) => c.setAttribute('tabindex', n === focused ? '0' : '-1'));
  cards[focused].focus({ preventScroll: false });
  sessionStorage.setItem('dropforge.focus', cards[focused].dataset.key);
}

function columns() {
  if (cards.length < 2) return 1;
  const top = cards[0].offsetTop;
  const n = cards.findIndex((c) => c.offsetTop !== top);
  return n === -1 ? cards.length : n;
}

function go(link, where) {
  if (!link) return;
  sessionStorage.setItem('dropforge.enter', where);
  location.href = link;
}

function move(delta) {
  const next = focused + delta;
  if (next < 0) return go(list.dataset.prev, 'last');
  if (next >= cards.length) return go(list.dataset.next, 'first');
  focus(next);
}

function updateSelection() {
  const n = selected.size;
  document.getElementById('selected').textContent = `${n} selected`;
  document.querySelectorAll('[data-bulk]').forEach((b) => { b.disabled = n === 0; });
  cards.forEach((c) => {
    const on = selected.has(c);
    c.classList.toggle('selected', on);
    c.querySelector('.pick').checked = on;
  });
}

function toggleSelect(card) {
  if (selected.has(card)) selected.delete(card); else selected.add(card);
  updateSelection();
}

function updatePicks() {
  sessionStorage.setItem(PICKS, JSON.stringify(picks));
  const link = document.getElementById('compare');
  link.hidden = picks.length < 1;
  link.textContent = `Compare (${picks.length})`;
  link.href = '/compare?' + picks.map((k) => `item=${encodeURIComponent(k)}`).join('&');
  cards.forEach((c) => c.classList.toggle('picked', picks.includes(c.dataset.key)));
}

function togglePick(card) {
  const key = card.dataset.key;
  picks = picks.includes(key) ? picks.filter((k) => k !== key) : [...picks, key].slice(-4);
  updatePicks();
}

const targets = () => (selected.size ? [...selected] : cards.length ? [cards[focused]] : []);

document.addEventListener('keydown', (event) => {
  if (event.target.closest('input:not(.pick), textarea, select') || event.ctrlKey || event.metaKey || event.altKey) return;
  const keys = {
    ArrowRight: () => move(1), ArrowLeft: () => move(-1),
    ArrowDown: () => move(columns()), ArrowUp: () => move(-columns()),
    f: () => rate(targets(), 'favorite'), x: () => rate(targets(), 'discard'),
    c: () => cards.length && togglePick(cards[focused]),
    ' ': () => cards.length && toggleSelect(cards[focused]),
    Enter: () => cards.length && (location.href = cards[focused].dataset.detail),
    Escape: () => { selected.clear(); picks = []; updateSelection(); updatePicks(); },
  };
  const action = keys[event.key.length === 1 ? event.key.toLowerCase() : event.key];
  if (!action) return;
  event.preventDefault();
  action();
});

cards.forEach((card, n) => {
  card.addEventListener('click', (event) => {
    if (event.target.closest('[data-restore]')) {
      post('/api/restore', { root: Number(card.dataset.root), path: card.dataset.path }).then((done) => {
        if (done) { card.classList.remove('discard'); card.querySelector('.placeholder').textContent = 'being made again'; }
      });
      return;
    }
    const button = event.target.closest('[data-rate]');
    if (button) { focus(n); rate([card], button.dataset.rate); return; }
    if (event.target.classList.contains('pick')) { focus(n); toggleSelect(card); return; }
    if (!event.target.closest('a')) focus(n);
  });
});
document.querySelectorAll('[data-bulk]').forEach((button) => button.addEventListener('click', async () => {
  const chosen = [...selected];
  if (button.dataset.bulk === 'clear') {
    const done = await post('/api/rate', { rating: 'clear', items: chosen.filter((c) => !c.dataset.gone)
      .map((c) => ({ root: Number(c.dataset.root), path: c.dataset.path })) });
    if (done) chosen.forEach((c) => show(c, 'clear'));
  } else {
    await rate(chosen, button.dataset.bulk);
  }
}));

// Where to start: the first or last tile after crossing a page, else the tile focused before.
const enter = sessionStorage.getItem('dropforge.enter');
sessionStorage.removeItem('dropforge.enter');
const remembered = cards.findIndex((c) => c.dataset.key === sessionStorage.getItem('dropforge.focus'));
if (cards.length) focus(enter === 'last' ? cards.length - 1 : enter === 'first' ? 0 : Math.max(0, remembered));
updatePicks();
