// dropforge's queue page: renders the snapshots the server streams (server-sent events) and
// sends the actions to /api/. Every text from the journal (file names, prompts, errors) is put
// into the page with textContent, never as HTML.

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
let previousDrops = null; // drop key -> folder, from the last snapshot
let dragged = null; // the id of the queued job being dragged: the page is not redrawn meanwhile
let pending = null; // the snapshot that arrived during a drag

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function post(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) toast(data.error || `request failed (${response.status})`, 'error');
  return data;
}

function toast(text, kind = 'info') {
  const node = el('p', { class: `toast ${kind}`, text, role: 'status' });
  $('toasts').append(node);
  setTimeout(() => node.remove(), 6000);
}

function tile(t) {
  const label = t.state === 'active' && t.step ? `step ${t.step[0]}/${t.step[1]}` : t.state;
  const node = el('li', { class: `tile ${t.state}`, title: `${t.name} (seed ${t.seed})` });
  if (t.url) node.append(el('img', { src: t.url, alt: t.name, loading: 'lazy' }));
  else node.append(el('span', { class: 'state', text: label }));
  if (t.state === 'active' && t.step) {
    const bar = el('span', { class: 'bar' });
    bar.style.width = `${Math.round((100 * t.step[0]) / t.step[1])}%`;
    node.append(bar);
  }
  node.append(el('span', { class: 'name', text: t.name }));
  return node;
}

function runningJob(job) {
  const seconds = job.seconds === null ? '' : `${Math.round(job.seconds)} s`;
  const note = job.canceling ? 'canceling…' : job.note || 'starting';
  return el(
    'article',
    { class: 'job', 'data-id': job.id },
    el(
      'div',
      { class: 'job-head' },
      el('h3', { text: job.input }),
      el('span', { class: 'muted', text: `${job.images_done}/${job.images_total} · ${note} · ${seconds}` }),
      el('button', {
        type: 'button', class: 'danger small', text: 'Cancel', 'data-action': 'cancel',
        disabled: Boolean(job.canceling), onclick: () => post('/api/cancel', { ids: [job.id] }),
      }),
    ),
    el('ol', { class: 'grid' }, ...job.tiles.map(tile)),
  );
}

function queuedJob(job, index, all) {
  const move = (to) => () => post('/api/priority', { id: job.id, to });
  const before = (other) => () => post('/api/move', { id: job.id, before: other.id });
  const item = el(
    'li',
    { class: 'queued', draggable: 'true', 'data-id': job.id },
    el('span', { class: 'handle', 'aria-hidden': 'true', text: '⋮⋮' }),
    el('span', { class: 'pos', text: String(job.position) }),
    el('span', { class: 'input', text: job.input }),
    el('span', { class: 'meta', text: [job.task, `${job.outputs} out`, job.seeds && `seeds ${job.seeds}`,
      job.priority ? `priority ${job.priority}` : ''].filter(Boolean).join(' · ') }),
    el('span', { class: 'buttons' },
      el('button', { type: 'button', class: 'small', text: 'Top', title: 'Run next', disabled: index === 0, onclick: move('top') }),
      el('button', { type: 'button', class: 'small', text: '↑', title: 'Move up', disabled: index === 0,
        onclick: index > 0 ? before(all[index - 1]) : null }),
      el('button', { type: 'button', class: 'small', text: '↓', title: 'Move down', disabled: index === all.length - 1,
        onclick: index + 2 < all.length ? () => post('/api/move', { id: all[index + 1].id, before: job.id }) : move('bottom') }),
      el('button', { type: 'button', class: 'small', text: 'Bottom', title: 'Run last', disabled: index === all.length - 1, onclick: move('bottom') }),
      el('button', { type: 'button', class: 'small danger', text: 'Cancel', 'data-action': 'cancel',
        onclick: () => post('/api/cancel', { ids: [job.id] }) }),
    ),
  );
  item.addEventListener('dragstart', (event) => {
    dragged = job.id;
    event.dataTransfer.setData('text/plain', String(job.id));
    item.classList.add('dragging');
  });
  item.addEventListener('dragend', () => {
    item.classList.remove('dragging');
    dragged = null;
    if (pending) render(pending);
  });
  item.addEventListener('dragover', (event) => { event.preventDefault(); item.classList.add('over'); });
  item.addEventListener('dragleave', () => item.classList.remove('over'));
  item.addEventListener('drop', (event) => {
    event.preventDefault();
    item.classList.remove('over');
    const id = Number(event.dataTransfer.getData('text/plain') || dragged);
    dragged = null;
    if (id && id !== job.id) post('/api/move', { id, before: job.id });
    if (pending) render(pending);
  });
  return item;
}

function listOf(id, jobs, empty, extra) {
  const list = $(id);
  list.replaceChildren(...(jobs.length ? jobs.map((job) => el('li', {},
    el('span', { class: 'input', text: job.input }), ' ',
    el('span', { class: 'reason', text: extra(job) }),
    job.state === 'failed' || job.state === 'canceled' || job.state === 'quarantined'
      ? el('button', { type: 'button', class: 'small', text: 'Retry', onclick: () => post('/api/retry', { ids: [job.id] }) })
      : null,
  )) : [el('li', { class: 'empty', text: empty })]));
}

function notifyDrops(drops) {
  const now = new Map(drops.map((d) => [d.key, d.folder]));
  if (previousDrops !== null) {
    for (const [key, folder] of previousDrops) {
      if (!now.has(key)) {
        const text = `All jobs in ${folder} are finished`;
        toast(text, 'done');
        if ('Notification' in window && Notification.permission === 'granted') {
          new Notification('dropforge', { body: text });
        }
      }
    }
  }
  previousDrops = now;
}

function render(data) {
  if (dragged !== null) { // redrawing would take the dragged row away from under the pointer
    pending = data;
    return;
  }
  pending = null;
  const daemon = $('daemon');
  daemon.className = `daemon ${data.daemon.running ? 'up' : 'down'}`;
  daemon.textContent = data.daemon.running ? `daemon running (pid ${data.daemon.pid})` : 'no daemon running';
  $('hosts').hidden = data.hosts.length === 0; // a cluster's live worker processes
  $('hosts').replaceChildren(...data.hosts.map((h) =>
    el('li', { text: `${h.owner} (${h.device}): ${h.job || 'idle'}` })));
  $('counts').replaceChildren(...Object.entries(data.counts).map(([state, n]) =>
    el('li', { class: `count ${state}` }, el('b', { text: String(n) }), ` ${state}`)));
  const running = [...data.running.map(runningJob), ...data.interrupted.map((job) =>
    el('article', { class: 'job interrupted' }, el('h3', { text: job.input }),
      el('p', { class: 'reason', text: `interrupted: its process ${job.owner} is gone; ${data.hosts.length ? 'a live host takes it over' : 'it resumes when dropforge runs again'}` })))];
  $('running').replaceChildren(...(running.length ? running : [el('p', { class: 'empty', text: 'Nothing running.' })]));
  $('queue-total').textContent = `(${data.queued_total})`;
  $('cancel-all').disabled = data.queued_total === 0;
  const queue = data.queued.map(queuedJob);
  $('queue').replaceChildren(...(queue.length ? queue : [el('li', { class: 'empty', text: 'The queue is empty.' })]));
  listOf('waiting', data.waiting, 'No job is waiting.', (j) => `${j.error} (retry in ${Math.round(j.retry_in)} s)`);
  listOf('failures', data.failures, 'No failures.', (j) => j.error || j.state);
  listOf('canceled', data.canceled, 'Nothing canceled.', (j) => j.error || 'canceled');
  $('banner').hidden = !data.all_done;
  notifyDrops(data.drops);
}

function connect() {
  const source = new EventSource('/api/events');
  source.addEventListener('snapshot', (event) => {
    $('stream').textContent = 'live';
    $('stream').className = 'stream live';
    render(JSON.parse(event.data));
  });
  source.addEventListener('closed', () => {
    $('stream').textContent = 'the web UI stopped';
    $('stream').className = 'stream down';
    source.close();
  });
  source.onerror = () => {
    $('stream').textContent = 'reconnecting…';
    $('stream').className = 'stream down';
  };
}

$('cancel-all').addEventListener('click', () => post('/api/cancel-all', { running: false }));
if ('Notification' in window && Notification.permission === 'default') {
  const button = $('notify');
  button.hidden = false;
  button.addEventListener('click', async () => {
    await Notification.requestPermission();
    button.hidden = true;
  });
}
connect();
