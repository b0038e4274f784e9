// The page: UI only. All model work happens in worker.js (the wasm module lives there).
import { setupIf } from './deepfloyd.js';
import { paintable, stroke } from './paint.js';
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SIDE = 28;
const PIXELS = SIDE * SIDE;

const state = {
  worker: null,
  ready: false,
  entries: new Map(), // name -> manifest entry, for every model pkg/manifest.json lists
  denoiser: null, // the name of the manifest's denoiser (a UNet without conditioning), if any
  models: new Map(), // name -> manifest entry, for every model the page can use
  onDemand: new Set(), // names among them the worker fetches on first use
  backend: params.get('backend') || 'auto',
  nextId: 1,
  pending: new Map(), // id -> {resolve, reject, onStep}
  running: null, // id of the generation in progress
  cancelling: null, // id of the generation a Cancel was sent for
  jobs: 0, // generate/denoise requests sent and not yet answered: the one source of "busy"
  dead: false, // the worker crashed: nothing runs until the page is reloaded
  deadMessage: '',
  digit: 7,
  firstDigitMs: null,
};

// ---------- errors and status ----------
// Each error is shown next to what caused it: 'page' (start-up, in the header), 'gen' (the
// generate card) or 'denoise' (the playground).
const ERROR_BOX = { page: 'error', gen: 'gen-error', denoise: 'denoise-error' };
function showError(message, where = 'page') {
  const el = $(ERROR_BOX[where]);
  el.textContent = message;
  el.hidden = false;
  if (where !== 'page') el.scrollIntoView({ block: 'nearest' });
}
function clearError(where) { $(ERROR_BOX[where]).hidden = true; }
const visibleErrors = () => Object.values(ERROR_BOX).map($).filter((e) => !e.hidden).map((e) => e.textContent).join('\n');
function showNotice(message) {
  const el = $('notice');
  el.textContent = message;
  el.hidden = !message;
}

// ---------- the worker ----------
function startWorker(backend) {
  if (state.worker) state.worker.terminate();
  state.ready = false;
  state.backend = backend;
  const w = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  w.onmessage = (e) => onWorkerMessage(e.data);
  w.onerror = (e) => {
    e.preventDefault();
    const msg = e.message || 'the worker script failed to load';
    if (backend !== 'cpu' && !state.ready) {
      startWorker('cpu');
      showNotice(`WebGPU start-up crashed (${msg}): running on the CPU instead, which is much slower.`);
    } else {
      state.dead = true;
      state.deadMessage = `The compute worker failed: ${msg}. Reload the page; if it persists, your browser may not support module workers or WebAssembly SIMD.`;
      showError(state.deadMessage);
      refresh();
    }
  };
  state.worker = w;
  w.postMessage({ type: 'init', id: 0, backend, ifCompute: params.get('ifcompute') || 'auto' });
}

function request(msg, onStep, onProgress) {
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.pending.set(id, { resolve, reject, onStep, onProgress });
    state.worker.postMessage({ ...msg, id });
  });
}

function onWorkerMessage(msg) {
  const job = state.pending.get(msg.id);
  switch (msg.type) {
    case 'status':
      $('backend').textContent = msg.text;
      break;
    case 'progress':
      if (job) { if (job.onProgress) job.onProgress(msg); break; }
      $('load-progress').textContent = msg.total
        ? `${msg.name}: ${(msg.loaded / 1e6).toFixed(1)} / ${(msg.total / 1e6).toFixed(1)} MB`
        : `${msg.name}: ${(msg.loaded / 1e6).toFixed(1)} MB`;
      break;
    case 'ready':
      onReady(msg);
      break;
    case 'step':
      if (job && job.onStep) job.onStep(msg);
      break;
    case 'done': case 'denoised': case 'classified':
      state.pending.delete(msg.id);
      if (job) job.resolve(msg);
      break;
    default:
      // The IF card's answers (if-listed, if-loaded, ...).
      if (msg.type.startsWith('if-') && job) {
        state.pending.delete(msg.id);
        job.resolve(msg);
      }
      break;
    case 'error':
      if (msg.job === 'init') {
        // A crash while opening WebGPU: retry on the CPU once.
        if (msg.fatal && state.backend === 'auto' && /RuntimeError|unreachable/i.test(msg.message)) {
          showNotice(`WebGPU start-up crashed (${msg.message}): running on the CPU instead, which is much slower.`);
          startWorker('cpu');
          return;
        }
        $('backend').textContent = 'Not ready';
        showError(`The page could not start: ${msg.message}`);
        return;
      }
      state.pending.delete(msg.id);
      // An IF job that crashed the engine or lost the GPU (out of memory, device lost): start a
      // fresh worker; it takes the weights from the browser's storage again, not the network.
      if (msg.job.startsWith('if-') && (msg.fatal || /lost|out of memory|outofmemory/i.test(msg.message))) {
        const why = `The IF run failed on the device (${msg.message}). The engine was restarted; the stored weights are loaded again without a download.`;
        state.ifRestarted = why;
        startWorker(state.backend);
        if (job) job.reject(new Error(why));
        return;
      }
      if (msg.fatal) {
        // Before the job's own handler runs, so its "failed" message cannot replace this one,
        // and the buttons stay off: the engine is gone.
        state.dead = true;
        state.deadMessage = `The compute engine crashed (${msg.message}). Reload the page to start again.`;
        showError(state.deadMessage);
      }
      if (job) job.reject(new Error(msg.message));
      else if (!msg.fatal) showError(msg.message);
      refresh();
      break;
  }
}

function onReady(msg) {
  state.ready = true;
  state.models = new Map([...msg.models, ...msg.onDemand].map((m) => [m.name, m]));
  state.onDemand = new Set(msg.onDemand.map((m) => m.name));
  const label = msg.backend === 'webgpu' ? `WebGPU: ${msg.adapter}` : `CPU fallback: ${msg.adapter}`;
  $('backend').textContent = label;
  $('backend').dataset.backend = msg.backend;
  $('load-progress').textContent = '';
  if (msg.notice) showNotice(msg.notice);
  // Without a classifier the digits come without verdicts: say so where they would be, for good.
  $('no-classifier').hidden = [...state.models.values()].some((m) => m.kind === 'mnist-classifier');
  if (msg.failed.length) {
    showError(msg.failed.map((f) => `Could not load model '${f.name}': ${f.message}`).join('\n')
      + '\nReload the page to fetch it again; if this persists, the site\'s pkg/ files are damaged (rebuild and redeploy them).');
  }
  // The generate panel offers every flow model the manifest lists for the page, in its order;
  // one that did not load stays listed, disabled.
  state.entries = new Map(msg.entries.map((m) => [m.name, m]));
  const flows = msg.entries.filter((m) => m.kind === 'mnist-unet' && m.conditioning !== 'none' && m.page);
  $('model').replaceChildren(...flows.map((m) => {
    const have = state.models.has(m.name);
    const opt = new Option(have ? m.page.label : `${m.page.label} (not available)`, m.name);
    opt.disabled = !have;
    return opt;
  }));
  const first = [...$('model').options].find((o) => !o.disabled);
  if (first) $('model').value = first.value;
  applyLimits(true);
  // Say why the playground's button stays off, rather than leave it silently disabled.
  // (A denoiser that failed to load is explained by the error above instead.)
  state.denoiser = msg.entries.find((m) => m.kind === 'mnist-unet' && m.conditioning === 'none')?.name ?? null;
  $('denoiser-missing').hidden = state.models.has(state.denoiser) || msg.failed.some((f) => f.name === state.denoiser);
  onModelChange();
  state.ifCard.onReady().catch((e) => showError(`DeepFloyd IF: ${e.message}`));
  if (params.has('bench')) runBenchmark();
}

// ---------- drawing ----------
function drawDigit(canvas, pixels, offset = 0) {
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(SIDE, SIDE);
  for (let i = 0; i < PIXELS; i++) {
    const v = pixels[offset + i];
    const g = Number.isFinite(v) ? Math.round(Math.min(1, Math.max(0, v)) * 255) : 0;
    img.data[4 * i] = g; img.data[4 * i + 1] = g; img.data[4 * i + 2] = g; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function readDigit(canvas) {
  const d = canvas.getContext('2d').getImageData(0, 0, SIDE, SIDE).data;
  const out = new Float32Array(PIXELS);
  for (let i = 0; i < PIXELS; i++) out[i] = d[4 * i] / 255;
  return out;
}

const verdictText = (v, i) => `${v[2 * i]}, ${Math.round(v[2 * i + 1] * 100)}%`;

function buildGrid() {
  const grid = $('grid');
  grid.innerHTML = '';
  for (let i = 0; i < 40; i++) {
    const f = document.createElement('figure');
    const c = document.createElement('canvas');
    c.width = SIDE; c.height = SIDE; c.className = 'digit';
    const cap = document.createElement('figcaption');
    cap.innerHTML = '&nbsp;';
    f.append(c, cap);
    grid.append(f);
  }
}

// ---------- generation ----------
// Every button's state follows from the state object alone, so no path can leave Generate on
// while a job runs, or Cancel on without one.
function refresh() {
  const idle = state.ready && !state.dead && state.jobs === 0;
  for (const id of ['gen-one', 'gen-grid']) $(id).disabled = !idle || !state.models.has($('model').value);
  $('denoise').disabled = !idle || !state.models.has(state.denoiser);
  $('cancel').disabled = state.dead || state.running === null || state.cancelling === state.running;
}

// Runs `work` as one job: busy while it runs, idle after, whatever happens.
async function job(work) {
  state.jobs++;
  refresh();
  try {
    return await work();
  } finally {
    state.jobs--;
    refresh();
  }
}

// A seed is a whole number 0..2^32-1; anything else is refused, not silently changed.
function readSeed(id) {
  const text = $(id).value.trim();
  const v = Number(text);
  if (text === '' || !Number.isInteger(v) || v < 0 || v > 4294967295) {
    throw new Error(`the seed must be a whole number from 0 to 4294967295 (got "${text}")`);
  }
  return v;
}

function settings() {
  const model = $('model').value;
  const seed = readSeed('seed');
  return {
    model,
    guidance: Number($('guidance').value),
    steps: Number($('steps').value),
    solver: $('solver').value,
    seed,
  };
}

// Whether a model takes a digit (and so guidance): the manifest says how it is conditioned.
const isConditional = (name) => state.models.get(name)?.conditioning === 'time_class';

// For a model the worker fetches on first use: shows `loading <label> (<size> MB)…` in `el` now,
// and returns the progress callback that keeps it up to date while the download runs.
function loadingNotice(el, name, label) {
  if (state.onDemand.has(name)) {
    el.textContent = `loading ${label} (${(state.models.get(name).bytes / 1e6).toFixed(1)} MB)…`;
  }
  return (p) => {
    el.textContent = `loading ${label}: ${(p.loaded / 1e6).toFixed(1)}${p.total ? ` / ${(p.total / 1e6).toFixed(1)}` : ''} MB`;
  };
}

async function generate(labels, onStep) {
  clearError('gen');
  const s = settings();
  const msg = { type: 'generate', ...s, labels };
  const stepMs = [];
  return job(async () => {
    // A model fetched on first use (recipe 5's flow) says so in the timing line while it downloads.
    const onProgress = loadingNotice($('timing'), s.model, s.model);
    const req = request(msg, (m) => { stepMs.push(m.ms); onStep(m); showTiming(m.step + 1, m.steps, stepMs, null); }, onProgress);
    state.running = state.nextId - 1;
    refresh();
    try {
      const done = await req;
      state.onDemand.delete(s.model);
      showTiming(stepMs.length, s.steps, stepMs, done);
      return { ...done, stepMs };
    } finally {
      state.running = null;
      state.cancelling = null;
    }
  });
}

// Failures of a job, shown next to the control that started it; a crashed engine keeps its own
// message (set when the crash was reported).
function jobFailed(where, what, e) {
  showError(state.dead ? state.deadMessage : `${what}: ${e.message}`, where);
}

function showTiming(done, total, stepMs, result) {
  const mean = stepMs.length ? stepMs.reduce((a, b) => a + b, 0) / stepMs.length : 0;
  let text = `step ${done}/${total}, ${mean.toFixed(0)} ms per step`;
  if (result) text += result.cancelled ? ' - cancelled' : `, ${(result.totalMs / 1000).toFixed(2)} s in total`;
  $('timing').textContent = text;
}

async function generateOne() {
  const canvas = $('one');
  $('one-verdict').innerHTML = '&nbsp;';
  const label = isConditional($('model').value) ? state.digit : 0;
  try {
    const r = await generate([label], (m) => drawDigit(canvas, m.pixels));
    if (r.cancelled) return r;
    drawDigit(canvas, r.pixels);
    if (r.verdicts) $('one-verdict').textContent = `classifier: ${verdictText(r.verdicts, 0)}`;
    if (state.firstDigitMs === null) state.firstDigitMs = performance.now();
    return r;
  } catch (e) {
    jobFailed('gen', 'Generation failed', e);
    throw e;
  }
}

async function generateGrid() {
  const figs = [...$('grid').children];
  const labels = [];
  for (let row = 0; row < 4; row++) for (let d = 0; d < 10; d++) labels.push(d);
  const draw = (pixels) => figs.forEach((f, i) => drawDigit(f.firstChild, pixels, i * PIXELS));
  figs.forEach((f) => { f.lastChild.innerHTML = '&nbsp;'; });
  try {
    const r = await generate(labels, (m) => draw(m.pixels));
    if (r.cancelled) return r;
    draw(r.pixels);
    if (r.verdicts) figs.forEach((f, i) => { f.lastChild.textContent = verdictText(r.verdicts, i); });
    return r;
  } catch (e) {
    jobFailed('gen', 'Generation failed', e);
    throw e;
  }
}

// The sampler settings' limits (and, when `defaults`, values) from the chosen model's manifest
// entry: `page.steps` and `page.guidance` are [min, max, default], `page.solver` the default.
function applyLimits(defaults) {
  const hints = state.entries?.get($('model').value)?.page;
  if (!hints) return;
  for (const key of ['steps', 'guidance']) {
    const r = hints[key];
    if (!r) continue;
    const el = $(key);
    [el.min, el.max] = [r[0], r[1]];
    const v = defaults ? r[2] : Math.min(r[1], Math.max(r[0], Number(el.value)));
    el.value = v;
    $(`${key}-out`).textContent = el.value;
  }
  if (defaults && hints.solver) $('solver').value = hints.solver;
}

function onModelChange() {
  applyLimits(false);
  const conditional = isConditional($('model').value);
  $('digits').disabled = !conditional;
  $('guidance').disabled = !conditional;
  $('grid-caption').textContent = conditional
    ? '4 samples of each digit (columns 0-9), with the classifier\'s verdict.'
    : '40 unconditional samples (the time-only model takes no digit), with the classifier\'s verdict.';
  refresh();
}

function cancel() {
  if (state.running === null || state.dead) return;
  state.cancelling = state.running;
  state.worker.postMessage({ type: 'cancel', id: state.running });
  $('timing').textContent += ' - cancelling after the current step…';
  refresh();
}

// ---------- the denoiser playground ----------
function setupPad() {
  const pad = $('pad');
  const ctx = pad.getContext('2d');
  const clear = () => { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, pad.width, pad.height); };
  clear();
  paintable(pad, (a, b) => stroke(ctx, a, b, 22, '#fff'), updateClean);
  $('clear-pad').onclick = () => { clear(); updateClean(); };
}

// MNIST-style preprocessing: fit the drawing's bounding box into 20x20, centred in 28x28.
function padToDigit() {
  const pad = $('pad');
  const src = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
  let x0 = pad.width, y0 = pad.height, x1 = -1, y1 = -1;
  for (let y = 0; y < pad.height; y++) for (let x = 0; x < pad.width; x++) {
    if (src[4 * (y * pad.width + x)] > 20) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  const tmp = document.createElement('canvas');
  tmp.width = SIDE; tmp.height = SIDE;
  const t = tmp.getContext('2d');
  t.fillStyle = '#000'; t.fillRect(0, 0, SIDE, SIDE);
  if (x1 >= 0) {
    const w = x1 - x0 + 1, h = y1 - y0 + 1, s = 20 / Math.max(w, h);
    t.imageSmoothingEnabled = true; t.imageSmoothingQuality = 'high';
    t.drawImage(pad, x0, y0, w, h, (SIDE - w * s) / 2, (SIDE - h * s) / 2, w * s, h * s);
  }
  return readDigit(tmp);
}

function updateClean() { drawDigit($('clean'), padToDigit()); }

async function denoise() {
  clearError('denoise');
  const cap = $('denoised-cap');
  // The first use fetches the denoiser (15.8 MB for D=128): say so under its output.
  const onProgress = loadingNotice(cap, state.denoiser, 'the denoiser');
  try {
    const seed = readSeed('noise-seed');
    const r = await job(() => request({
      type: 'denoise', model: state.denoiser, pixels: readDigit($('clean')), sigma: Number($('sigma').value), seed,
    }, null, onProgress));
    state.onDemand.delete(state.denoiser);
    drawDigit($('noisy'), r.noisy);
    drawDigit($('denoised'), r.denoised);
    return r;
  } catch (e) {
    jobFailed('denoise', 'Denoising failed', e);
    throw e;
  } finally {
    cap.textContent = 'denoised';
  }
}

// ---------- benchmark mode (?bench) ----------
async function runBenchmark() {
  const out = $('bench');
  out.hidden = false;
  out.textContent = 'benchmark running…';
  const steps = Number(params.get('bench-steps') || 5);
  const gridSteps = Number(params.get('bench-grid-steps') || 2);
  $('model').value = 'class_flow';
  $('steps').value = steps; $('guidance').value = 5; $('solver').value = 'euler';
  const one = await generateOne();
  const firstDigitMs = state.firstDigitMs;
  const oneAgain = await generateOne(); // warm: shaders compiled
  $('steps').value = gridSteps;
  const grid = await generateGrid();
  const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
  const result = {
    backend: $('backend').textContent,
    page_load_to_first_digit_ms: Math.round(firstDigitMs),
    first_digit_steps: steps,
    batch1_guided_ms_per_step_cold_median: Math.round(median(one.stepMs)),
    batch1_guided_ms_per_step_warm_median: Math.round(median(oneAgain.stepMs)),
    grid40_guided_ms_per_step_median: Math.round(median(grid.stepMs)),
    grid_steps: gridSteps,
    user_agent: navigator.userAgent,
  };
  out.textContent = JSON.stringify(result, null, 2);
  out.dataset.done = '1';
}

// ---------- wiring ----------
function setup() {
  const digits = $('digits');
  for (let d = 0; d < 10; d++) {
    const l = document.createElement('label');
    l.className = 'digit-pick';
    l.innerHTML = `<input type="radio" name="digit" value="${d}" ${d === state.digit ? 'checked' : ''}/><span>${d}</span>`;
    digits.append(l);
  }
  digits.addEventListener('change', (e) => { state.digit = Number(e.target.value); });
  for (const id of ['guidance', 'steps', 'sigma']) {
    const sync = () => { $(`${id}-out`).textContent = $(id).value; };
    $(id).addEventListener('input', sync);
    sync();
  }
  $('random-seed').onclick = () => { $('seed').value = Math.floor(Math.random() * 2 ** 32); };
  $('model').onchange = onModelChange;
  $('gen-one').onclick = () => generateOne().catch(() => {});
  $('gen-grid').onclick = () => generateGrid().catch(() => {});
  $('cancel').onclick = cancel;
  $('denoise').onclick = () => denoise().catch(() => {});
  buildGrid();
  setupPad();
  state.ifCard = setupIf({
    request,
    cancel: (id) => state.worker.postMessage({ type: 'cancel', id }),
    lastId: () => state.nextId - 1,
  });
  updateClean();
  refresh();
  if (typeof WebAssembly !== 'object') {
    showError('This browser cannot run WebAssembly, which the playground needs. Try a current Chrome, Edge, Firefox or Safari.');
    return;
  }
  startWorker(state.backend);
}

// For tests and the console: the same entry points the buttons use.
window.playground = {
  classify: (pixels) => request({ type: 'classify', pixels: Array.from(pixels) }).then((r) => r.verdicts),
  readDigit: (id) => Array.from(readDigit($(id))),
  generateOne, generateGrid, denoise,
  // Every error shown in the page, wherever it is ('' when none).
  errors: visibleErrors,
  get ready() { return state.ready; },
  // Models the worker fetches on first use (the manifest's `page.at_start` false).
  get onDemand() { return [...state.onDemand]; },
  get deepfloyd() { return state.ifCard.hooks; },
};

setup();
