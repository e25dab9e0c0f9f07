// The detail view: rate, restore, copy the parameters / seed / prompt, regenerate with a seed.
import { post, toast } from './common.js';

const detail = document.getElementById('detail');
const item = { root: Number(detail.dataset.root), path: detail.dataset.path };
const field = (name) => document.querySelector(`[data-field="${name}"]`).textContent;

const back = sessionStorage.getItem('dropforge.gallery');
if (back) document.getElementById('back').href = back;

document.querySelectorAll('[data-rate]').forEach((button) => button.addEventListener('click', async () => {
  const done = await post('/api/rate', { rating: button.dataset.rate, items: [item] });
  if (done) {
    const rating = button.dataset.rate === 'clear' ? 'none' : button.dataset.rate;
    const label = document.getElementById('rating');
    label.dataset.rating = rating;
    label.textContent = `rating: ${rating}`;
  }
}));

const restore = document.getElementById('restore');
if (restore) restore.addEventListener('click', async () => {
  const done = await post('/api/restore', item);
  if (done) toast(`${done.requeued}: requeued; the image is made again`, 'done');
});

async function copy(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} copied`, 'done');
  } catch {
    toast(`could not copy the ${what} (the browser refused)`, 'error');
  }
}

document.querySelectorAll('[data-copy]').forEach((button) => button.addEventListener('click', () => {
  const what = button.dataset.copy;
  if (what === 'parameters') copy(document.getElementById('parameters').value, 'parameters');
  else copy(field(what), what);
}));

const form = document.getElementById('regen');
if (form) form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const seed = Number(form.elements.seed.value);
  const sets = form.elements.set.value.split(/\s+/).filter(Boolean);
  const done = await post('/api/regenerate', { ...item, seed, set: sets });
  if (done) {
    const text = `wrote ${done.input} (seed ${done.seed}); it is made like any new input`;
    document.getElementById('regen-result').textContent = text;
    toast(text, 'done');
  }
});

document.addEventListener('keydown', (event) => {
  if (event.target.closest('input, textarea')) return;
  if (event.key === 'Escape') location.href = document.getElementById('back').href;
});
