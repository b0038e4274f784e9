// The page's DeepFloyd IF card: UI only. The worker (deepfloyd-worker.js) brings the weights in,
// stores them and runs the model; this file sends it requests and draws what comes back.
import { paintable, stroke } from './paint.js';

const $ = (id) => document.getElementById(id);
const LAST = 'deepfloyd-last-package';

// `api`: {request(msg, onStep, onProgress) -> Promise, cancel(id), lastId()}.
export function setupIf(api) {
  const st = {
    side: 0,
    model: null, // the loaded package's info
    compute: null, // 'f16' or 'f32': what IF computes in on this device
    prompts: [],
    views: [],
    busy: false,
    running: null,
    results: [],
    mode: () => $('if-mode').value,
  };

  function error(message) {
    const el = $('if-error');
    el.textContent = message || '';
    el.hidden = !message;
  }
  function notice(message) {
    const el = $('if-notice');
    el.textContent = message || '';
    el.hidden = !message;
  }

  function refresh() {
    const ready = st.model && st.prompts.length;
    $('if-run').disabled = st.busy || !ready;
    $('if-cancel').disabled = st.running === null;
    for (const id of ['if-files', 'if-fetch', 'if-emb']) $(id).disabled = st.busy;
    const mode = st.mode();
    for (const el of document.querySelectorAll('#deepfloyd [data-modes]')) el.hidden = !el.dataset.modes.split(' ').includes(mode);
  }

  async function busy(work) {
    st.busy = true;
    error('');
    refresh();
    try {
      return await work();
    } catch (e) {
      error(e.message);
      // Said again once the restarted worker has the weights back (its first job clears errors).
      if (/engine was restarted/.test(e.message)) st.restartNotice = e.message;
      throw e;
    } finally {
      st.busy = false;
      refresh();
    }
  }

  const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;
  const progress = (p) => {
    $('if-model').textContent = p.unit
      ? `${p.name}: ${p.loaded} / ${p.total} ${p.unit}`
      : `${p.name}: ${mb(p.loaded)}${p.total ? ` / ${mb(p.total)}` : ''}`;
  };

  function showLoaded(info) {
    st.model = info;
    st.side = info.side;
    for (const id of ['if-input', 'if-mask', 'if-preview']) { $(id).width = info.side; $(id).height = info.side; }
    clearCanvas();
    $('if-model').textContent = `Loaded: ${(info.parameters / 1e6).toFixed(1)}M parameters, ${info.scheme}, ${mb(info.bytes)}, ${info.side}×${info.side}, from ${info.source}${info.stored ? ' (kept in this browser)' : ''}.`;
    localStorage.setItem(LAST, info.key);
    notice(info.notice || st.restartNotice);
    st.restartNotice = null;
  }

  function showStored(packages) {
    const box = $('if-stored');
    box.replaceChildren(...packages.map((p) => {
      const row = document.createElement('div');
      row.className = 'row';
      row.dataset.key = p.key;
      const text = p.error ? `stored package ${p.key.slice(0, 12)}…: ${p.error}` : `stored: ${(p.parameters / 1e6).toFixed(1)}M parameters, ${p.scheme}, ${mb(p.bytes)} (${p.key.slice(0, 12)}…)`;
      const span = document.createElement('span');
      span.textContent = text;
      const use = document.createElement('button');
      use.textContent = 'Use';
      use.disabled = !!p.error;
      use.onclick = () => loadStored(p.key).catch(() => {});
      const forget = document.createElement('button');
      forget.textContent = 'Forget';
      forget.className = 'forget';
      forget.onclick = () => busy(async () => {
        const r = await api.request({ type: 'if-forget', key: p.key });
        if (st.model && st.model.key === p.key) { st.model = null; $('if-model').textContent = 'No IF model loaded.'; }
        if (localStorage.getItem(LAST) === p.key) localStorage.removeItem(LAST);
        showStored(r.packages);
      }).catch(() => {});
      row.append(span, use, forget);
      return row;
    }));
  }

  function fillPrompts(prompts) {
    st.prompts = prompts;
    const label = (p) => (p === '' ? '"" (the null prompt)' : p);
    for (const id of ['if-prompt', 'if-null', 'if-low', 'if-high']) {
      const el = $(id);
      const keep = el.value;
      el.replaceChildren(...prompts.map((p) => new Option(label(p), p)));
      if (prompts.includes(keep)) el.value = keep;
    }
    if (prompts.includes('')) $('if-null').value = '';
    const rest = prompts.filter((p) => p !== '');
    if (rest.length) { $('if-prompt').value = rest[0]; $('if-low').value = rest[0]; $('if-high').value = rest[Math.min(1, rest.length - 1)]; }
    buildPairs();
  }

  function buildPairs() {
    const box = $('if-pairs');
    const old = [...box.querySelectorAll('.row')].map((r) => [r.querySelector('.p').value, r.querySelector('.v').value]);
    const rest = st.prompts.filter((p) => p !== '');
    box.replaceChildren();
    for (let i = 0; i < 2; i++) {
      const row = document.createElement('div');
      row.className = 'row';
      const p = document.createElement('select');
      p.className = 'p';
      p.append(...st.prompts.map((x) => new Option(x === '' ? '"" (null)' : x, x)));
      p.value = old[i] ? old[i][0] : (rest[i] ?? rest[0] ?? '');
      const v = document.createElement('select');
      v.className = 'v';
      v.append(...st.views.map((x) => new Option(x, x)));
      v.value = old[i] ? old[i][1] : (i === 0 ? 'identity' : 'flip');
      row.append(`view ${i + 1}: prompt`, p, 'seen through', v);
      box.append(row);
    }
  }

  // --- weights and embeddings ---

  async function loadStored(key) {
    return busy(async () => {
      const r = await api.request({ type: 'if-load-stored', key }, null, progress);
      showLoaded(r);
      return r;
    });
  }

  // Weights brought in by `msg` (picked or fetched): shown, and the stored list refreshed.
  async function bringIn(msg) {
    const r = await api.request(msg, null, progress);
    showLoaded(r);
    showStored((await api.request({ type: 'if-list' })).packages);
    return r;
  }

  const pick = (files) => busy(() => bringIn({ type: 'if-pick', files: [...files], scheme: $('if-scheme').value }));

  const fetchUrl = (url) => busy(async () => {
    if (!url) throw new Error('give the URL of a package (its manifest.json, or the folder holding it)');
    return bringIn({ type: 'if-url', url });
  });

  async function embeddings(file) {
    return busy(async () => {
      const r = await api.request({ type: 'if-embeddings', file });
      fillPrompts(r.prompts);
      if (r.notice) notice(r.notice);
      return r;
    });
  }

  // At start (and after the worker restarts): what is stored, and the last package used.
  async function onReady() {
    const l = await api.request({ type: 'if-list' });
    st.views = l.views;
    showStored(l.packages);
    const lim = l.limits;
    st.compute = l.compute.dtype;
    $('if-limits').textContent = (lim
      ? `This GPU: buffers up to ${mb(Math.min(lim.maxBufferSize, lim.maxStorageBufferBindingSize))} per binding, ${lim.shaderF16 ? 'with' : 'without'} f16 shaders. `
      : 'CPU backend: IF runs, slowly (minutes per image for IF-I-M). ') + l.compute.note;
    if (l.embeddings) fillPrompts(l.embeddings.prompts);
    else buildPairs();
    const last = localStorage.getItem(LAST);
    if (last && l.packages.some((p) => p.key === last && !p.error)) await loadStored(last).catch(() => {});
    refresh();
  }

  // --- the image and mask canvases ---

  function clearCanvas() {
    const c = $('if-input').getContext('2d');
    c.fillStyle = '#808080';
    c.fillRect(0, 0, st.side || 64, st.side || 64);
    $('if-mask').getContext('2d').clearRect(0, 0, st.side || 64, st.side || 64);
  }

  // 1 where the mask is painted (alpha at least half), as the desktop reads a mask picture.
  function maskValues() {
    const s = st.side;
    const d = $('if-mask').getContext('2d').getImageData(0, 0, s, s).data;
    const m = new Float32Array(s * s);
    for (let i = 0; i < s * s; i++) m[i] = d[4 * i + 3] >= 128 ? 1 : 0;
    return m;
  }

  function invertMask() {
    const s = st.side;
    const c = $('if-mask').getContext('2d');
    const img = c.getImageData(0, 0, s, s);
    for (let i = 0; i < s * s; i++) {
      const on = img.data[4 * i + 3] >= 128;
      img.data.set(on ? [0, 0, 0, 0] : [255, 40, 40, 255], 4 * i);
    }
    c.putImageData(img, 0, 0);
  }

  // The mask as `dp if inpaint --mask` reads it: white where new content goes.
  function maskPng() {
    const s = st.side;
    const m = maskValues();
    const c = document.createElement('canvas');
    c.width = s; c.height = s;
    const ctx = c.getContext('2d');
    const img = ctx.createImageData(s, s);
    for (let i = 0; i < s * s; i++) { const g = m[i] ? 255 : 0; img.data.set([g, g, g, 255], 4 * i); }
    ctx.putImageData(img, 0, 0);
    return c.toDataURL('image/png');
  }

  async function canvasImage() {
    const blob = await new Promise((resolve) => $('if-input').toBlob(resolve, 'image/png'));
    const r = await api.request({ type: 'if-image', file: new File([blob], 'the drawn image.png', { type: 'image/png' }) });
    return r.pixels;
  }

  async function upload(file) {
    return busy(async () => {
      const r = await api.request({ type: 'if-image', file });
      drawChw($('if-input'), r.pixels, 0);
      return r;
    });
  }

  function drawChw(canvas, chw, offset) {
    const s = st.side;
    const n = s * s;
    const ctx = canvas.getContext('2d');
    const img = ctx.createImageData(s, s);
    const u8 = (v) => (Number.isFinite(v) ? Math.round(Math.min(1, Math.max(0, (v + 1) / 2)) * 255) : 0);
    for (let i = 0; i < n; i++) {
      img.data[4 * i] = u8(chw[offset + i]);
      img.data[4 * i + 1] = u8(chw[offset + n + i]);
      img.data[4 * i + 2] = u8(chw[offset + 2 * n + i]);
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  // --- runs ---

  function readInt(id, lo, hi, what) {
    const text = $(id).value.trim();
    const v = Number(text);
    if (text === '' || !Number.isInteger(v) || v < lo || v > hi) throw new Error(`${what} must be a whole number from ${lo} to ${hi} (got "${text}")`);
    return v;
  }
  function readNum(id, lo, hi, what) {
    const text = $(id).value.trim();
    const v = Number(text);
    if (text === '' || !Number.isFinite(v) || v < lo || v > hi) throw new Error(`${what} must be a number from ${lo} to ${hi} (got "${text}")`);
    return v;
  }

  function settings() {
    const mode = st.mode();
    const s = {
      mode,
      nullPrompt: $('if-null').value,
      // The course's forward-process demo is unguided: one model call a step.
      guidance: mode === 'denoise' ? 1 : readNum('if-guidance', 0, 100, 'guidance'),
      stride: readInt('if-stride', 1, 1000, 'the stride'),
      seed: readInt('if-seed', 0, 4294967295, 'the seed'),
      x0: $('if-x0').value,
    };
    if (mode === 'sample' || mode === 'sdedit' || mode === 'inpaint' || mode === 'denoise') s.prompt = $('if-prompt').value;
    if (mode === 'denoise') s.iStarts = [readInt('if-istart', 0, 1000, 'i_start')];
    if (mode === 'sdedit') {
      const list = $('if-istarts').value.split(',').map((t) => t.trim()).filter((t) => t !== '');
      const n = list.map(Number);
      if (!n.length || n.some((v) => !Number.isInteger(v) || v < 0)) throw new Error(`i_start values must be whole numbers separated by commas, like 1,3,5,7,10,20 (got "${$('if-istarts').value}")`);
      s.iStarts = n;
    }
    if (mode === 'anagram') {
      const rows = [...$('if-pairs').querySelectorAll('.row')];
      s.prompts = rows.map((r) => r.querySelector('.p').value);
      s.views = rows.map((r) => r.querySelector('.v').value);
    }
    if (mode === 'hybrid') {
      s.low = $('if-low').value;
      s.high = $('if-high').value;
      s.kernel = readInt('if-kernel', 1, 127, 'the blur taps');
      s.sigma = readNum('if-sigma', 0.01, 100, 'the blur sigma');
    }
    return s;
  }

  // Steps of each run of a series: the schedule 990, 990 - stride, ..., 0 from timesteps[i_start].
  function stepsOf(s) {
    const count = Math.floor(990 / s.stride) + 1;
    return (s.iStarts || [0]).map((i) => Math.max(0, count - 1 - i));
  }

  async function run() {
    let s;
    try { s = settings(); } catch (e) { error(e.message); return null; }
    return busy(async () => {
      let image, mask;
      if (s.mode === 'sdedit' || s.mode === 'inpaint' || s.mode === 'denoise') image = await canvasImage();
      if (s.mode === 'inpaint') mask = maskValues();
      const plan = stepsOf(s);
      const all = plan.reduce((a, b) => a + b, 0);
      const ms = [];
      $('if-results').replaceChildren();
      const onStep = (m) => {
        ms.push(m.ms);
        drawChw($('if-preview'), m.x0, 0);
        const done = plan.slice(0, m.run).reduce((a, b) => a + b, 0) + m.step + 1;
        const mean = ms.reduce((a, b) => a + b, 0) / ms.length;
        const eta = ((all - done) * mean) / 1000;
        $('if-timing').textContent = `${m.runs > 1 ? `run ${m.run + 1} of ${m.runs}, ` : ''}step ${m.step + 1} of ${m.steps}, ${mean.toFixed(0)} ms per step, about ${eta.toFixed(1)} s left`;
      };
      const req = api.request({ type: 'if-run', settings: s, image, mask }, onStep);
      st.running = api.lastId();
      refresh();
      try {
        const r = await req;
        if (r.cancelled) {
          $('if-timing').textContent += ' - cancelled';
          return r;
        }
        st.results = r.images;
        showResults(s, r.images);
        const mean = ms.length ? ms.reduce((a, b) => a + b, 0) / ms.length : 0;
        $('if-timing').textContent = `${ms.length} steps, ${mean.toFixed(0)} ms per step, ${(r.totalMs / 1000).toFixed(2)} s in total`;
        return { ...r, stepMs: ms };
      } finally {
        st.running = null;
      }
    });
  }

  function resultCanvas(chw, caption, small) {
    const f = document.createElement('figure');
    const c = document.createElement('canvas');
    c.width = st.side; c.height = st.side; c.className = 'rgb big';
    drawChw(c, chw, 0);
    const cap = document.createElement('figcaption');
    const a = document.createElement('a');
    a.textContent = 'PNG';
    a.download = `${caption.replace(/[^a-z0-9]+/gi, '_')}.png`;
    a.href = c.toDataURL('image/png');
    cap.append(`${caption} `, a);
    f.append(c);
    if (small) {
      const s = document.createElement('canvas');
      s.width = st.side; s.height = st.side; s.className = 'rgb small';
      drawChw(s, chw, 0);
      f.append(s);
    }
    f.append(cap);
    return f;
  }

  function showResults(s, images) {
    const box = $('if-results');
    const figs = [];
    if (s.mode === 'sdedit') {
      s.iStarts.forEach((i, k) => figs.push(resultCanvas(images[k], `i_start ${i}`)));
      figs.push(resultCanvas(images[images.length - 1], 'input'));
    } else if (s.mode === 'anagram') {
      images.forEach((im, k) => figs.push(resultCanvas(im, `${s.views[k]}: ${s.prompts[k] || '""'}`)));
      const anim = document.createElement('button');
      anim.textContent = 'Animate';
      let timer = null;
      anim.onclick = () => {
        if (timer) { clearInterval(timer); timer = null; anim.textContent = 'Animate'; return; }
        let k = 0;
        const c = figs[0].querySelector('canvas');
        timer = setInterval(() => { k = (k + 1) % images.length; drawChw(c, images[k], 0); }, 1200);
        anim.textContent = 'Stop';
      };
      figs.push(anim);
    } else if (s.mode === 'hybrid') {
      figs.push(resultCanvas(images[0], `hybrid: ${s.low} (far) / ${s.high} (near)`, true));
    } else if (s.mode === 'denoise') {
      // A line per timestep of the forward process: noisy, blurred, one UNet step.
      const line = (...f) => { const d = document.createElement('div'); d.className = 'line'; d.append(...f); return d; };
      [250, 500, 750].forEach((t, k) => figs.push(line(
        resultCanvas(images[3 * k], `noisy, t = ${t}`),
        resultCanvas(images[3 * k + 1], `Gaussian blur, t = ${t}`),
        resultCanvas(images[3 * k + 2], `one step, t = ${t}`))));
      figs.push(line(resultCanvas(images[9], `iterative from i_start ${s.iStarts[0]}`), resultCanvas(images[10], 'input')));
    } else {
      figs.push(resultCanvas(images[0], s.mode === 'inpaint' ? 'inpainted' : s.prompt || 'sample'));
    }
    box.replaceChildren(...figs);
  }

  function cancel() {
    if (st.running === null) return;
    api.cancel(st.running);
    $('if-timing').textContent += ' - cancelling after the current step…';
  }

  // --- wiring ---
  $('if-files').onchange = (e) => { if (e.target.files.length) pick(e.target.files).catch(() => {}).finally(() => { e.target.value = ''; }); };
  $('if-fetch').onclick = () => fetchUrl($('if-url').value.trim()).catch(() => {});
  $('if-emb').onchange = (e) => { if (e.target.files[0]) embeddings(e.target.files[0]).catch(() => {}).finally(() => { e.target.value = ''; }); };
  $('if-image').onchange = (e) => { if (e.target.files[0]) upload(e.target.files[0]).catch(() => {}).finally(() => { e.target.value = ''; }); };
  $('if-mode').onchange = refresh;
  $('if-run').onclick = () => run().catch(() => {});
  $('if-cancel').onclick = cancel;
  $('if-clear').onclick = () => {
    if (st.mode() === 'inpaint') $('if-mask').getContext('2d').clearRect(0, 0, st.side, st.side);
    else clearCanvas();
  };
  $('if-invert').onclick = invertMask;
  $('if-overlay').onchange = (e) => { $('if-mask').style.opacity = e.target.checked ? '0.55' : '0'; };
  $('if-mask').style.opacity = '0.55';
  $('if-mask-png').onclick = () => { const a = document.createElement('a'); a.href = maskPng(); a.download = 'mask.png'; a.click(); };
  paintable($('if-input'), (a, b) => stroke($('if-input').getContext('2d'), a, b, Math.max(1, st.side / 16), $('if-color').value, false));
  paintable($('if-mask'), (a, b) => stroke($('if-mask').getContext('2d'), a, b, Number($('if-brush').value), 'rgb(255,40,40)', $('if-erase').checked));
  refresh();

  return {
    onReady,
    // Tests and the console: the same entry points the controls use, and the last results.
    hooks: {
      run, loadStored, fetchUrl,
      get results() { return st.results.map((a) => Array.from(a)); },
      get model() { return st.model; },
      get compute() { return st.compute; },
      get prompts() { return st.prompts; },
      get busy() { return st.busy; },
      maskPng,
      errors: () => ($('if-error').hidden ? '' : $('if-error').textContent),
    },
  };
}
