// The worker's DeepFloyd IF half: bringing weights in (a package picked from disk or fetched from
// a URL, or a diffusers unet/ folder converted here), keeping them in the browser's storage
// (OPFS, keyed by the manifest's sha256), prompt embeddings, and the runs. The checks are the
// wasm side's (manifest, hashes, shapes, adapter limits); this file moves bytes.
//
// Storage layout (OPFS): if/<key>/ holds the shards and, written last, manifest.json; a folder
// without manifest.json is an unfinished store and is removed, never used. if-embeddings/ holds
// the last embeddings file picked (name.txt beside it).

const MANIFEST = 'manifest.json';

// `getPg()`: the worker's Playground (created at init); `wasm`: the module's classes.
export function makeIf({ getPg, wasm, post, current }) {
  const job = () => current();
  // Every call below runs after init, so the playground exists.
  const pgProxy = new Proxy({}, { get: (_, k) => { const pg = getPg(); const v = pg[k]; return typeof v === 'function' ? v.bind(pg) : v; } });
  const pg = pgProxy;
  let stored = null; // {key, info} of the model loaded now

  async function opfs() {
    if (!self.navigator.storage || !self.navigator.storage.getDirectory) return null;
    try { return await self.navigator.storage.getDirectory(); } catch (e) { return null; }
  }

  async function ifRoot(create) {
    const root = await opfs();
    if (!root) return null;
    try { return await root.getDirectoryHandle('if', { create }); } catch (e) { return null; }
  }

  async function readFileHandle(dir, name) {
    const h = await dir.getFileHandle(name);
    return new Uint8Array(await (await h.getFile()).arrayBuffer());
  }

  async function writeFile(dir, name, bytes) {
    const h = await dir.getFileHandle(name, { create: true });
    const w = await h.createWritable();
    try {
      await w.write(bytes);
      await w.close();
    } catch (e) {
      try { await w.abort(); } catch (_) { /* already failed */ }
      throw e;
    }
  }

  // Stores a verified package; shards first, the manifest last (its presence says "complete").
  // A quota error removes what was written and says the model stays in memory only.
  async function store(key, manifestText, shards) {
    const root = await ifRoot(true);
    if (!root) return 'This browser offers no storage for the weights (OPFS): they stay in memory until the page closes.';
    let dir;
    try {
      dir = await root.getDirectoryHandle(key, { create: true });
      for (const s of shards) await writeFile(dir, s.file, s.bytes);
      await writeFile(dir, MANIFEST, new TextEncoder().encode(manifestText));
      return null;
    } catch (e) {
      try { await root.removeEntry(key, { recursive: true }); } catch (_) { /* nothing written */ }
      const quota = e && (e.name === 'QuotaExceededError' || /quota/i.test(e.message));
      return quota
        ? `The browser's storage quota is too small for these weights (${e.message}): they stay in memory only, and a reload will ask for them again.`
        : `The weights could not be stored (${e.message}): they stay in memory only.`;
    }
  }

  // The packages stored complete, with their sizes; unfinished ones are removed.
  async function list() {
    const root = await ifRoot(false);
    const out = [];
    if (!root) return out;
    for await (const [key, h] of root.entries()) {
      if (h.kind !== 'directory') continue;
      let text = null;
      try { text = new TextDecoder().decode(await readFileHandle(h, MANIFEST)); } catch (e) { /* unfinished */ }
      if (text === null) {
        try { await root.removeEntry(key, { recursive: true }); } catch (_) { /* in use */ }
        continue;
      }
      try {
        const info = pg.ifCheckPackage(text);
        out.push({ key, bytes: info.bytes, scheme: info.scheme, parameters: info.parameters, side: info.side });
      } catch (e) {
        out.push({ key, bytes: 0, error: e.message });
      }
    }
    return out;
  }

  async function loadVerified(manifestText, shards, source) {
    const info = await pg.ifLoadPackage(manifestText, shards.map((s) => s.bytes));
    stored = { key: info.key, info };
    return { ...info, source };
  }

  // --- the ways weights come in ---

  async function fromStore({ id, key }) {
    const root = await ifRoot(false);
    if (!root) throw new Error('this browser has no stored weights (no OPFS)');
    let dir;
    try { dir = await root.getDirectoryHandle(key); } catch (e) { throw new Error(`no stored package ${key}`); }
    const text = new TextDecoder().decode(await readFileHandle(dir, MANIFEST));
    const info = pg.ifCheckPackage(text);
    const shards = [];
    for (const s of info.shards) {
      post({ type: 'progress', id, name: `stored ${s.file}`, loaded: shards.length, total: info.shards.length });
      const bytes = await readFileHandle(dir, s.file);
      try {
        pg.ifVerifyShard(text, shards.length, bytes);
      } catch (e) {
        await root.removeEntry(key, { recursive: true });
        throw new Error(`the stored copy is damaged (${e.message}); it was removed: load the weights again`);
      }
      shards.push({ file: s.file, bytes });
    }
    return { ...(await loadVerified(text, shards, 'browser storage')), stored: true };
  }

  async function fromPicked({ id, files, scheme }) {
    const byName = new Map(files.map((f) => [f.name, f]));
    if (byName.has(MANIFEST)) return fromPackageFiles(id, byName);
    if (byName.has('config.json')) return fromDiffusers(id, byName, scheme);
    throw new Error(`the picked files (${[...byName.keys()].slice(0, 6).join(', ')}) hold neither a package's manifest.json nor a diffusers unet's config.json: pick the folder made by \`dp convert\`, or the unet folder of an IF stage-1 download`);
  }

  async function fromPackageFiles(id, byName) {
    const text = await byName.get(MANIFEST).text();
    const info = pg.ifCheckPackage(text); // before reading any shard: manifest and adapter limits
    const missing = info.shards.filter((s) => !byName.has(s.file)).map((s) => s.file);
    if (missing.length) throw new Error(`the package's shard(s) ${missing.join(', ')} are missing from the picked files: pick the whole folder`);
    const shards = [];
    for (const [i, s] of info.shards.entries()) {
      post({ type: 'progress', id, name: s.file, loaded: i, total: info.shards.length, unit: 'shards' });
      const bytes = new Uint8Array(await byName.get(s.file).arrayBuffer());
      pg.ifVerifyShard(text, i, bytes);
      shards.push({ file: s.file, bytes });
    }
    return finishLoad(text, shards, info, 'picked package');
  }

  async function fromUrl({ id, url }) {
    const base = new URL(url, self.location.href);
    const manifestUrl = base.pathname.endsWith('.json') ? base : new URL(MANIFEST, base.href.endsWith('/') ? base : base.href + '/');
    const res = await fetch(manifestUrl).catch((e) => { throw new Error(`${manifestUrl}: ${e.message} (offline, or the server does not allow this page's origin: CORS)`); });
    if (!res.ok) throw new Error(`${manifestUrl}: HTTP ${res.status} ${res.statusText}`);
    const text = await res.text();
    const info = pg.ifCheckPackage(text);
    const total = info.bytes;
    let done = 0;
    const shards = [];
    for (const [i, s] of info.shards.entries()) {
      // The wasm side checked each shard's name is a plain file name.
      const u = new URL(encodeURIComponent(s.file), manifestUrl);
      const bytes = await fetchWithProgress(u, s.bytes, (n) => post({ type: 'progress', id, name: 'IF weights', loaded: done + n, total }));
      if (job() && job().cancelled) throw new Error('cancelled');
      pg.ifVerifyShard(text, i, bytes);
      done += bytes.length;
      shards.push({ file: s.file, bytes });
    }
    return finishLoad(text, shards, info, String(manifestUrl));
  }

  async function fetchWithProgress(url, expected, onBytes) {
    const res = await fetch(url).catch((e) => { throw new Error(`${url}: ${e.message}`); });
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
    const reader = res.body.getReader();
    // Never more than the manifest says: a longer answer is not this shard.
    const out = new Uint8Array(expected);
    let n = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (n + value.length > expected) { reader.cancel(); throw new Error(`${url}: longer than the ${expected} bytes its manifest states (not this package's shard)`); }
      out.set(value, n);
      n += value.length;
      onBytes(n);
    }
    if (n !== expected) throw new Error(`${url}: ${n} bytes arrived, its manifest states ${expected} (cut short: try again)`);
    return out;
  }

  async function finishLoad(text, shards, info, source) {
    const loaded = await loadVerified(text, shards, source);
    const notice = await store(info.key, text, shards);
    return { ...loaded, stored: !notice, notice };
  }

  // A diffusers unet/ folder: converted here to a package (f16, q8 or q4) one tensor at a time.
  async function fromDiffusers(id, byName, scheme) {
    const config = await byName.get('config.json').text();
    const conv = pg.ifConverter(config, scheme || 'q8');
    const weights = pickWeightFiles(byName);
    for (const f of weights) {
      const first = new Uint8Array(await f.slice(0, 8).arrayBuffer());
      const n = wasm.IfConverter.headerLength(first, f.size, f.name);
      conv.addFile(f.name, new Uint8Array(await f.slice(0, n).arrayBuffer()), f.size);
    }
    const plan = conv.plan();
    const shards = [];
    const take = () => { for (let s = conv.takeShard(); s; s = conv.takeShard()) shards.push(s); };
    for (const [i, p] of plan.entries()) {
      const bytes = new Uint8Array(await byName.get(p.file).slice(p.start, p.end).arrayBuffer());
      conv.addTensor(p.name, bytes);
      take();
      if (i % 8 === 0 || i + 1 === plan.length) post({ type: 'progress', id, name: 'converting', loaded: i + 1, total: plan.length, unit: 'tensors' });
      if (job() && job().cancelled) throw new Error('cancelled');
    }
    const text = conv.finish();
    take();
    conv.free();
    const info = pg.ifCheckPackage(text);
    return finishLoad(text, shards, info, `converted to ${scheme || 'q8'} in the page`);
  }

  // The weights of a diffusers folder: the sharded index's files, or the single file (the
  // .fp16 variant when both are there: half the reading, the same package).
  function pickWeightFiles(byName) {
    for (const v of ['.fp16', '']) {
      const one = byName.get(`diffusion_pytorch_model${v}.safetensors`);
      if (one) return [one];
    }
    const shards = [...byName.values()].filter((f) => /^diffusion_pytorch_model(\.fp16)?-\d+-of-\d+\.safetensors$/.test(f.name));
    if (shards.length) {
      const fp16 = shards.filter((f) => f.name.includes('.fp16-'));
      return fp16.length ? fp16 : shards;
    }
    throw new Error('config.json is there but no diffusion_pytorch_model[.fp16].safetensors (or its shards): pick the whole unet folder');
  }

  // --- embeddings ---

  async function embeddings({ file, url }) {
    let bytes, name;
    if (file) { bytes = new Uint8Array(await file.arrayBuffer()); name = file.name; }
    else {
      const res = await fetch(url).catch((e) => { throw new Error(`${url}: ${e.message}`); });
      if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
      bytes = new Uint8Array(await res.arrayBuffer());
      name = new URL(url, self.location.href).pathname.split('/').pop() || url;
    }
    const prompts = pg.ifLoadEmbeddings(bytes, name);
    let notice = null;
    const root = await opfs();
    if (root) {
      try {
        const dir = await root.getDirectoryHandle('if-embeddings', { create: true });
        // What was read, as safetensors (a .pth is stored re-packed).
        await writeFile(dir, 'embeddings.safetensors', pg.ifEmbeddingsFile());
        await writeFile(dir, 'name.txt', new TextEncoder().encode(name));
      } catch (e) { notice = `The embeddings could not be stored (${e.message}): pick them again after a reload.`; }
    }
    return { prompts, name, notice };
  }

  async function storedEmbeddings() {
    const root = await opfs();
    if (!root) return null;
    try {
      const dir = await root.getDirectoryHandle('if-embeddings');
      const bytes = await readFileHandle(dir, 'embeddings.safetensors');
      const name = new TextDecoder().decode(await readFileHandle(dir, 'name.txt'));
      return { prompts: pg.ifLoadEmbeddings(bytes, name), name };
    } catch (e) {
      return null;
    }
  }

  // --- requests ---

  async function handle(msg) {
    const { id } = msg;
    switch (msg.type) {
      case 'if-list': {
        const packages = await list();
        const emb = await storedEmbeddings().catch(() => null);
        return post({ type: 'if-listed', id, packages, embeddings: emb, loaded: stored && stored.key, views: wasm.Playground.ifViews(), limits: pg.limits, compute: pg.ifCompute });
      }
      case 'if-load-stored': return post({ type: 'if-loaded', id, ...(await fromStore(msg)) });
      case 'if-pick': return post({ type: 'if-loaded', id, ...(await fromPicked(msg)) });
      case 'if-url': return post({ type: 'if-loaded', id, ...(await fromUrl(msg)) });
      case 'if-forget': {
        const root = await ifRoot(false);
        if (root) { try { await root.removeEntry(msg.key, { recursive: true }); } catch (e) { /* already gone */ } }
        if (stored && stored.key === msg.key) { pg.ifUnload(); stored = null; }
        return post({ type: 'if-forgot', id, packages: await list() });
      }
      case 'if-embeddings': return post({ type: 'if-embedded', id, ...(await embeddings(msg)) });
      case 'if-image': {
        const pixels = pg.ifPrepareImage(new Uint8Array(await msg.file.arrayBuffer()), msg.file.name || 'the image');
        return post({ type: 'if-image', id, pixels, side: stored.info.side }, [pixels.buffer]);
      }
      case 'if-run': return run(msg);
      default: throw new Error(`unknown request '${msg.type}'`);
    }
  }

  async function run({ id, settings, image, mask }) {
    const j = job();
    const t0 = performance.now();
    const onStep = (run, runs, step, steps, x0, ms) => {
      post({ type: 'step', id, run, runs, step, steps, x0, ms }, [x0.buffer]);
      return new Promise((resolve) => setTimeout(() => resolve(!j.cancelled), 0));
    };
    const out = await pg.ifRun(JSON.stringify(settings), image ? Float32Array.from(image) : undefined, mask ? Float32Array.from(mask) : undefined, onStep);
    const totalMs = performance.now() - t0;
    if (out === null) return post({ type: 'done', id, cancelled: true, totalMs });
    const images = Array.from(out);
    post({ type: 'done', id, images, totalMs, cancelled: false }, images.map((a) => a.buffer));
  }

  return { handle };
}
