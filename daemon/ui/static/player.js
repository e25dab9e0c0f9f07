// The frame player: 1–30 fps, loop or ping-pong, step frame by frame (← →), scrub.
const frames = [...document.querySelectorAll('#frames li')].map((li) => li.dataset.src);
const img = document.getElementById('frame');
const scrub = document.getElementById('scrub');
const fps = document.getElementById('fps');
const play = document.getElementById('play');
let index = 0;
let direction = 1;
let timer = null;

// Decode every frame once, so playback does not wait for the network.
const loaded = frames.map((src) => { const i = new Image(); i.src = src; return i; });

function show(n) {
  index = (n + frames.length) % frames.length;
  img.src = loaded[index].src;
  img.dataset.index = String(index);
  scrub.value = String(index);
  document.getElementById('position').textContent = `${index + 1} / ${frames.length}`;
}

function tick() {
  const loop = document.getElementById('loop').checked;
  const pingpong = document.getElementById('pingpong').checked;
  let next = index + direction;
  if (next >= frames.length || next < 0) {
    if (pingpong) { direction = -direction; next = index + direction; }
    else if (loop) next = direction > 0 ? 0 : frames.length - 1;
    else { stop(); return; }
  }
  show(Math.max(0, Math.min(frames.length - 1, next)));
}

function start() {
  stop();
  timer = setInterval(tick, 1000 / Number(fps.value));
  play.textContent = 'Pause';
}

function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
  play.textContent = 'Play';
}

play.addEventListener('click', () => (timer === null ? start() : stop()));
document.getElementById('step').addEventListener('click', () => { stop(); show(index + 1); });
document.getElementById('back').addEventListener('click', () => { stop(); show(index - 1); });
scrub.addEventListener('input', () => { stop(); show(Number(scrub.value)); });
fps.addEventListener('input', () => {
  document.getElementById('fps-value').textContent = fps.value;
  if (timer !== null) start();
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'ArrowRight') { stop(); show(index + 1); }
  else if (event.key === 'ArrowLeft') { stop(); show(index - 1); }
  else if (event.key === ' ') { event.preventDefault(); timer === null ? start() : stop(); }
});
show(0);
start();
