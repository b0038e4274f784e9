// The compute worker: owns the wasm module and the models, so the page never blocks.
// Protocol (all messages are plain objects with a `type`):
//   page -> worker: init {backend: 'auto'|'webgpu'|'cpu'}, generate {...}, denoise {...}, classify {...}, cancel {id},
//                   and the IF requests if-* (see deepfloyd-worker.js)
//   worker -> page: status, progress, ready, step, done, denoised, classified, error, and the if-* answers
// Models the page does not need at start are fetched on first use (see onDemand), with progress
// tagged by the job's id.
import init, { Playground, IfConverter } from './diffusion-playground.js';
import { makeIf } from './deepfloyd-worker.js';

let pg = null;
let hasClassifier = false;
// Manifest entries listed but not fetched yet: name -> entry.
const pending = new Map();
// The manifest says which models are fetched before the first digit (`page.at_start`); every
// other one waits for its first use.
const onDemand = (m) => !m.page?.at_start;
let current = null; // the job running now: {id, cancelled}
const queue = [];
let busy = false;

const post = (msg, transfer) => self.postMessage(msg, transfer || []);
const deepfloyd = makeIf({ getPg: () => pg, wasm: { Playground, IfConverter }, post, current: () => current });

self.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === 'cancel') {
    if (current && current.id === msg.id) current.cancelled = true;
    const i = queue.findIndex((m) => m.id === msg.id);
    // A job cancelled before it started still gets its answer, so the page never waits for it.
    if (i >= 0) post({ type: 'done', id: queue.splice(i, 1)[0].id, cancelled: true, totalMs: 0 });
    return;
  }
  queue.push(msg);
  pump();
};

async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const msg = queue.shift();
    current = { id: msg.id, cancelled: false };
    try {
      await handle(msg);
    } catch (err) {
      // A trap (RuntimeError) leaves the wasm instance unusable: the page must restart us.
      const fatal = err instanceof WebAssembly.RuntimeError || msg.type === 'init';
      post({ type: 'error', id: msg.id, job: msg.type, message: String((err && err.message) || err), fatal });
    }
    current = null;
  }
  busy = false;
}

async function handle(msg) {
  switch (msg.type) {
    case 'init': return start(msg);
    case 'generate': return generate(msg);
    case 'denoise': return denoise(msg);
    case 'classify': return classify(msg);
    default:
      if (msg.type.startsWith('if-')) return deepfloyd.handle(msg);
      throw new Error(`unknown request '${msg.type}'`);
  }
}

async function openDevice(backend, ifCompute) {
  if (backend === 'cpu') return { pg: await Playground.create('cpu', ifCompute), notice: null };
  let why;
  if (!self.navigator.gpu) {
    why = 'This browser has no WebGPU';
  } else {
    let adapter = null;
    try { adapter = await self.navigator.gpu.requestAdapter(); } catch (e) { /* reported below */ }
    if (!adapter) {
      why = 'WebGPU is present but offered no adapter (disabled, blocklisted GPU, or no GPU)';
    } else {
      const software = adapter.isFallbackAdapter || (adapter.info && adapter.info.isFallbackAdapter);
      if (software && backend === 'auto') {
        // Measured on a 2-core machine: SwiftShader ~1.2 s per guided step, this crate's wasm CPU
        // backend ~70 ms. An emulated GPU is never the faster choice, so say so and use the CPU.
        return {
          pg: await Playground.create('cpu', ifCompute),
          notice: `The only WebGPU adapter is a software emulation (${describe(adapter)}), about 20x slower than the CPU backend: using the CPU. Add ?backend=webgpu to the address to use it anyway.`,
        };
      }
      try {
        return { pg: await Playground.create('webgpu', ifCompute), notice: null, adapter: describe(adapter) };
      } catch (e) {
        if (e instanceof WebAssembly.RuntimeError) throw e; // the page restarts us on the CPU
        why = `WebGPU failed to start (${e.message})`;
      }
    }
  }
  if (backend === 'webgpu') throw new Error(`${why}; remove ?backend=webgpu to allow the CPU fallback`);
  return { pg: await Playground.create('cpu', ifCompute), notice: `${why}: running on the CPU instead, which is much slower.` };
}

// The browser's own words for the adapter (wgpu sees little of it from inside the browser).
function describe(adapter) {
  const i = adapter.info || {};
  const words = [i.vendor, i.architecture, i.device, i.description].filter((w) => w);
  const name = words.length ? words.join(' ') : 'unnamed adapter';
  return adapter.isFallbackAdapter || i.isFallbackAdapter ? `${name} (software fallback adapter)` : name;
}

async function fetchBytes(url, name, id) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText} (is pkg/ deployed next to the page?)`);
  const total = Number(res.headers.get('content-length')) || 0;
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const parts = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.length;
    post({ type: 'progress', id, name, loaded, total });
  }
  const out = new Uint8Array(loaded);
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

async function start({ backend, ifCompute }) {
  post({ type: 'status', text: 'Loading the WebAssembly module…' });
  // Fetched here rather than by init() so its download (2-3 MB gzipped) shows byte progress.
  await init({ module_or_path: await fetchBytes(new URL('./diffusion-playground_bg.wasm', import.meta.url), 'the WebAssembly module') });
  post({ type: 'status', text: 'Opening the compute device…' });
  const dev = await openDevice(backend || 'auto', ifCompute || 'auto');
  pg = dev.pg;
  const res = await fetch('./pkg/manifest.json');
  if (!res.ok) throw new Error(`pkg/manifest.json: HTTP ${res.status} (is pkg/ deployed next to the page?)`);
  const models = pg.setManifest(await res.text());
  const loaded = [];
  const failed = [];
  for (const m of models) {
    if (onDemand(m)) { pending.set(m.name, m); continue; }
    post({ type: 'status', text: `Loading ${m.name} (${(m.bytes / 1e6).toFixed(1)} MB)…` });
    try {
      await loadEntry(m);
      loaded.push(m);
    } catch (e) {
      if (e instanceof WebAssembly.RuntimeError) throw e;
      failed.push({ name: m.name, message: e.message });
    }
  }
  hasClassifier = loaded.some((m) => m.kind === 'mnist-classifier');
  post({ type: 'ready', backend: pg.backend, adapter: dev.adapter || pg.adapter, notice: dev.notice, entries: models, models: loaded, onDemand: [...pending.values()], failed });
}

// Fetches manifest entry `m` from pkg/ and builds it on the device (progress tagged with `id`).
async function loadEntry(m, id) {
  // The wasm side checked every manifest file name is a plain name (no path, no URL).
  pg.loadModel(m.name, await fetchBytes(`./pkg/${encodeURIComponent(m.files[0].file)}`, m.name, id));
}

// Fetches and builds a model held back by onDemand; a failure leaves it pending, so the next
// request tries again.
async function ensureLoaded(name, id) {
  const m = pending.get(name);
  if (!m) return; // loaded at start, or not in the manifest (the wasm side says which)
  try {
    await loadEntry(m, id);
  } catch (e) {
    if (e instanceof WebAssembly.RuntimeError) throw e;
    throw new Error(`could not load model '${name}' (${(m.bytes / 1e6).toFixed(1)} MB): ${e.message}`);
  }
  pending.delete(name);
}

async function generate({ id, model, labels, guidance, steps, solver, seed }) {
  const job = current;
  await ensureLoaded(model, id);
  const t0 = performance.now();
  const onStep = (step, total, pixels, ms) => {
    post({ type: 'step', id, step, steps: total, pixels, ms }, [pixels.buffer]);
    // Yield a macrotask so a 'cancel' message can be handled before the next step.
    return new Promise((resolve) => setTimeout(() => resolve(!job.cancelled), 0));
  };
  const pixels = await pg.generate(model, Uint32Array.from(labels), guidance, steps, solver, seed >>> 0, onStep);
  const totalMs = performance.now() - t0;
  if (pixels === null) return post({ type: 'done', id, cancelled: true, totalMs });
  let verdicts = null;
  if (hasClassifier) verdicts = Array.from(await pg.classify(pixels));
  post({ type: 'done', id, pixels, verdicts, totalMs, cancelled: false }, [pixels.buffer]);
}

async function denoise({ id, model, pixels, sigma, seed }) {
  await ensureLoaded(model, id);
  const out = await pg.denoise(model, Float32Array.from(pixels), sigma, seed >>> 0);
  const n = out.length / 2;
  post({ type: 'denoised', id, noisy: out.slice(0, n), denoised: out.slice(n) });
}

async function classify({ id, pixels }) {
  const v = await pg.classify(Float32Array.from(pixels));
  post({ type: 'classified', id, verdicts: Array.from(v) });
}
