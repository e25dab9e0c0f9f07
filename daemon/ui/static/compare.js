// Compare: a slider over two images, side by side with favorite / discard, and flip (space).
import { post } from './common.js';

const stage = document.getElementById('stage');
const top = document.getElementById('top');
const handle = document.getElementById('handle');
const split = document.getElementById('split');
const flipImg = document.getElementById('flip-img');
let showingA = true;

function setMode(mode) {
  stage.dataset.mode = mode;
  document.getElementById('slider').hidden = mode !== 'slider';
  split.hidden = mode !== 'slider';
  document.getElementById('side').hidden = mode !== 'side';
  document.getElementById('flip').hidden = mode !== 'flip';
  document.querySelectorAll('[data-mode]').forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.mode === mode)));
}

function setSplit(percent) {
  top.style.width = `${percent}%`;
  handle.style.left = `${percent}%`;
  const inner = top.querySelector('img');
  inner.style.width = `${document.getElementById('slider').clientWidth}px`;
}

function flip() {
  showingA = !showingA;
  flipImg.src = showingA ? flipImg.dataset.a : flipImg.dataset.b;
  const names = [...document.querySelectorAll('#side figcaption b')].map((b) => b.textContent);
  document.getElementById('flip-label').textContent = showingA ? names[0] : names[1] || names[0];
}

split.addEventListener('input', () => setSplit(Number(split.value)));
window.addEventListener('resize', () => setSplit(Number(split.value)));
document.querySelectorAll('[data-mode]').forEach((b) => b.addEventListener('click', () => setMode(b.dataset.mode)));
document.addEventListener('keydown', (event) => {
  if (event.key !== ' ') return;
  event.preventDefault();
  if (stage.dataset.mode !== 'flip') setMode('flip');
  else flip();
});
document.querySelectorAll('#side figure').forEach((figure) => figure.querySelectorAll('[data-rate]').forEach((button) =>
  button.addEventListener('click', async () => {
    const item = { root: Number(figure.dataset.root), path: figure.dataset.path };
    const done = await post('/api/rate', { rating: button.dataset.rate, items: [item] });
    if (done) {
      figure.classList.remove('favorite', 'discard', 'none');
      figure.classList.add(button.dataset.rate);
    }
  })));
setMode(stage.dataset.mode);
setSplit(50);
