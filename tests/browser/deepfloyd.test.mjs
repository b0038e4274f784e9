// DeepFloyd IF in the page, on the tiny IF-shaped fixture (tests/fixtures/deepfloyd/tiny_m, 16x16):
// loaded as a `dp convert` package and as the raw diffusers folder (converted in the page),
// every mode run on WebGPU (SwiftShader) and on the CPU fallback and compared with `dp if` on the
// desktop for the same package, embeddings, seed and settings; storage across a reload, forget,
// cancel, a crashed run, a full storage quota, and each bad input's message.
//
// Tolerance: dp writes 8-bit PNGs, so the page's floats are compared after the same rounding;
// the two backends' float sums differ in their last bits, which moves a pixel that sits on a
// rounding edge by one level. Allowed: every channel within 2 levels of 255, and at most 2% of
// them off by more than 1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const BASE = '/diffusion-playground/';
const ARTIFACTS = new URL('./artifacts/', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--disable-dev-shm-usage'];
const LOAD_MS = 240_000;
const JOB_MS = 600_000;
const DP = process.env.DP || 'target/release/dp';
const RAW = 'tests/fixtures/deepfloyd/tiny_m/unet';
const P1 = 'a red square';
const P2 = 'a blue circle';
// Few steps: timesteps 990, 790, 590, 390, 190 (4 steps); SDEdit from i_start 1 and 2.
const STRIDE = 200;
const I_STARTS = '1,2';
const HYBRID = { kernel: 9, sigma: 2 };

let site, gpuBrowser, cpuBrowser, tmp, pkgDir, outDir, manifestKey;

const dp = (...args) => execFileSync(DP, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const dpIf = (...args) => dp('if', '--package', pkgDir, '--embeddings', join(tmp, 'emb.safetensors'), '--seed', '0', '--stride', String(STRIDE),
  '--guidance', '7', '--x0', 'dynamic', '--out', outDir, '--scale', '1', ...args);

// A safetensors file of [77, width] f32 embeddings, one per prompt, deterministic values.
function embeddings(prompts, width) {
  const header = {};
  const parts = [];
  let off = 0;
  prompts.forEach((p, k) => {
    const v = new Float32Array(77 * width).map((_, i) => Math.sin(0.37 * i + 1.3 * k) * (k === 0 ? 0.2 : 1));
    header[p] = { dtype: 'F32', shape: [77, width], data_offsets: [off, off + v.byteLength] };
    off += v.byteLength;
    parts.push(Buffer.from(v.buffer));
  });
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, Buffer.from(json), ...parts]);
}

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  tmp = await mkdtemp(join(tmpdir(), 'dp-if-browser-'));
  pkgDir = join(tmp, 'pkg');
  outDir = join(tmp, 'out');
  try {
    dp('convert', '--unet', RAW, '--out', pkgDir, '--scheme', 'f16');
  } catch (e) {
    throw new Error(`${DP} convert failed (build it first: cargo build --release): ${e.stderr || e.message}`);
  }
  manifestKey = createHash('sha256').update(await readFile(join(pkgDir, 'manifest.json'))).digest('hex');
  const width = JSON.parse(await readFile(join(RAW, 'config.json'), 'utf8')).encoder_hid_dim;
  await writeFile(join(tmp, 'emb.safetensors'), embeddings(['', P1, P2], width));
  await writeFile(join(tmp, 'wrong-width.safetensors'), embeddings(['', P1], width + 8));
  // The expected images of the modes that need no input from the page.
  dpIf('sample', '--prompt', P1, '--n', '1');
  dpIf('anagram', '--prompt', P1, '--view', 'identity', '--prompt', P2, '--view', 'flip');
  dpIf('hybrid', '--low', P1, '--high', P2, '--kernel', String(HYBRID.kernel), '--sigma', String(HYBRID.sigma));
  site = await serve({ dir: 'dist', base: BASE, mounts: { 'if-test/': tmp } });
  gpuBrowser = await chromium.launch({ executablePath: CHROMIUM, args: [...FLAGS, '--enable-unsafe-webgpu'] });
  cpuBrowser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
});

after(async () => {
  await gpuBrowser?.close();
  await cpuBrowser?.close();
  site?.server.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

async function open(browser, query = '', setup) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 1800 } });
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  page.logs = logs;
  if (setup) await setup(page);
  await page.goto(site.url + query);
  try {
    await page.waitForFunction(() => window.playground?.ready || window.playground?.errors(), null, { timeout: LOAD_MS });
  } catch (e) {
    throw new Error(`page never became ready: ${e.message}\n${logs.join('\n')}`);
  }
  return page;
}

const ifIdle = (page) => page.waitForFunction(() => !window.playground.deepfloyd.busy, null, { timeout: JOB_MS });
const ifError = (page) => page.evaluate(() => window.playground.deepfloyd.errors());

async function pickFiles(page, files, scheme = 'q8') {
  await page.locator('#if-scheme').selectOption(scheme);
  await page.locator('#if-files').setInputFiles(files);
  await page.waitForFunction(() => window.playground.deepfloyd.busy, null, { timeout: 5000 }).catch(() => {});
  await ifIdle(page);
}

async function pickEmbeddings(page, file) {
  await page.locator('#if-emb').setInputFiles(file);
  await page.waitForFunction(() => window.playground.deepfloyd.busy, null, { timeout: 5000 }).catch(() => {});
  await ifIdle(page);
}

async function setup(page, mode) {
  // The mode last: it hides what it does not use (the denoising demo is unguided).
  await page.locator('#if-mode').selectOption('sample');
  await page.locator('#if-guidance').fill('7');
  await page.locator('#if-stride').fill(String(STRIDE));
  await page.locator('#if-seed').fill('0');
  // IF's dynamic thresholding: the page's asynchronous readback path, and values that stay in range.
  await page.locator('#if-x0').selectOption('dynamic');
  await page.locator('#if-mode').selectOption(mode);
}

async function run(page) {
  await page.locator('#if-run').click();
  await page.waitForFunction(() => window.playground.deepfloyd.busy, null, { timeout: 5000 }).catch(() => {});
  await ifIdle(page);
  assert.equal(await ifError(page), '', `the run failed\n${page.logs.join('\n')}`);
  return page.evaluate(() => window.playground.deepfloyd.results);
}

// Compares the page's result `chw` with tile `tile` of dp's PNG (tiles side by side, 2 px apart).
async function compare(page, png, tile, chw, what) {
  const d = await page.evaluate(async ({ url, tile, chw }) => {
    const bmp = await createImageBitmap(await (await fetch(url)).blob());
    const side = bmp.height;
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const ctx = c.getContext('2d');
    ctx.drawImage(bmp, 0, 0);
    const px = ctx.getImageData(tile * (side + 2), 0, side, side).data;
    const n = side * side;
    const u8 = (v) => Math.round(Math.min(1, Math.max(0, (v + 1) / 2)) * 255);
    let max = 0, over1 = 0;
    for (let i = 0; i < n; i++) for (let ch = 0; ch < 3; ch++) {
      const diff = Math.abs(u8(chw[ch * n + i]) - px[4 * i + ch]);
      max = Math.max(max, diff);
      if (diff > 1) over1++;
    }
    let spread = 0;
    for (let i = 0; i < 3 * n; i++) spread = Math.max(spread, Math.abs(chw[i] - chw[0]));
    return { max, over1: over1 / (3 * n), spread, len: chw.length, side };
  }, { url: `${site.url}if-test/out/${png}`, tile, chw });
  assert.equal(d.len, 3 * d.side * d.side, `${what}: the page's image has the model's size`);
  assert.ok(d.spread > 0.05, `${what}: the image is not flat`);
  assert.ok(d.max <= 2 && d.over1 <= 0.02, `${what}: the page differs from dp if by up to ${d.max} levels (${(d.over1 * 100).toFixed(1)}% of channels by more than 1)`);
  if (process.env.IF_TEST_VERBOSE) console.log(`${what}: max ${d.max} levels, ${(d.over1 * 100).toFixed(2)}% > 1`);
}

async function drawOn(page, id, strokes) {
  const box = await page.locator(`#${id}`).boundingBox();
  for (const [x0, y0, x1, y1] of strokes) {
    await page.mouse.move(box.x + x0 * box.width, box.y + y0 * box.height);
    await page.mouse.down();
    await page.mouse.move(box.x + x1 * box.width, box.y + y1 * box.height, { steps: 6 });
    await page.mouse.up();
  }
}

const dataUrlBytes = (u) => Buffer.from(u.split(',')[1], 'base64');

// Every mode, each compared with `dp if`; screenshots of each mode's card go to artifacts/.
async function allModes(page, tag) {
  await setup(page, 'sample');
  await page.locator('#if-prompt').selectOption(P1);
  let r = await run(page);
  assert.match(await page.locator('#if-timing').textContent(), /^4 steps, \d+ ms per step/);
  await compare(page, 'sample_a_red_square.png', 0, r[0], `${tag} text-to-image`);
  await page.locator('#deepfloyd').screenshot({ path: `${ARTIFACTS}if-${tag}-sample.png` });

  // SDEdit of a drawn image: the page's canvas is the input dp gets too.
  await setup(page, 'sdedit');
  await page.locator('#if-clear').click();
  await drawOn(page, 'if-input', [[0.2, 0.2, 0.8, 0.8], [0.8, 0.2, 0.2, 0.8]]);
  const drawn = await page.evaluate(() => document.getElementById('if-input').toDataURL('image/png'));
  await writeFile(join(tmp, `drawn-${tag}.png`), dataUrlBytes(drawn));
  await page.locator('#if-istarts').fill(I_STARTS);
  r = await run(page);
  assert.equal(r.length, 3, 'two i_start results and the input');
  dpIf('sdedit', '--image', join(tmp, `drawn-${tag}.png`), '--prompt', P1, '--i-start', I_STARTS);
  await compare(page, 'sdedit_a_red_square.png', 0, r[0], `${tag} SDEdit i_start 1`);
  await compare(page, 'sdedit_a_red_square.png', 1, r[1], `${tag} SDEdit i_start 2`);
  await page.locator('#deepfloyd').screenshot({ path: `${ARTIFACTS}if-${tag}-sdedit.png` });

  // The forward process and the denoisers it compares, on the same drawn image (unguided).
  await setup(page, 'denoise');
  await page.locator('#if-istart').fill('1');
  r = await run(page);
  assert.equal(r.length, 11, 'noisy, blurred and one-step for three timesteps, the iterative result, the input');
  dpIf('denoise', '--image', join(tmp, `drawn-${tag}.png`), '--prompt', P1, '--i-start', '1');
  for (const [k, t] of [250, 500, 750].entries()) {
    await compare(page, 'forward_t250_500_750.png', k + 1, r[3 * k], `${tag} forward process t=${t}`);
    await compare(page, 'blur_baseline_t250_500_750.png', k + 1, r[3 * k + 1], `${tag} blur baseline t=${t}`);
    await compare(page, 'one_step_t250_500_750.png', k + 1, r[3 * k + 2], `${tag} one-step denoising t=${t}`);
  }
  await compare(page, 'iterative_final.png', 0, r[9], `${tag} iterative denoising`);
  await page.locator('#deepfloyd').screenshot({ path: `${ARTIFACTS}if-${tag}-denoise.png` });

  // Inpainting over the same image with a mask drawn with the mouse.
  await setup(page, 'inpaint');
  await page.locator('#if-brush').fill('4');
  await drawOn(page, 'if-mask', [[0.3, 0.5, 0.7, 0.5]]);
  const mask = await page.evaluate(() => window.playground.deepfloyd.maskPng());
  await writeFile(join(tmp, `mask-${tag}.png`), dataUrlBytes(mask));
  r = await run(page);
  dpIf('inpaint', '--image', join(tmp, `drawn-${tag}.png`), '--mask', join(tmp, `mask-${tag}.png`), '--prompt', P1);
  await compare(page, 'inpaint.png', 2, r[0], `${tag} inpainting`);
  await page.locator('#deepfloyd').screenshot({ path: `${ARTIFACTS}if-${tag}-inpaint.png` });

  await setup(page, 'anagram');
  const rows = page.locator('#if-pairs .row');
  await rows.nth(0).locator('.p').selectOption(P1);
  await rows.nth(0).locator('.v').selectOption('identity');
  await rows.nth(1).locator('.p').selectOption(P2);
  await rows.nth(1).locator('.v').selectOption('flip');
  r = await run(page);
  await compare(page, 'anagram.png', 0, r[0], `${tag} anagram (identity)`);
  await compare(page, 'anagram.png', 1, r[1], `${tag} anagram (flip)`);
  // The comparison can fail: the result against its own flipped view.
  await assert.rejects(compare(page, 'anagram.png', 1, r[0], 'identity against flip'), /differs from dp if/);
  await page.locator('#deepfloyd').screenshot({ path: `${ARTIFACTS}if-${tag}-anagram.png` });

  await setup(page, 'hybrid');
  await page.locator('#if-low').selectOption(P1);
  await page.locator('#if-high').selectOption(P2);
  await page.locator('#if-kernel').fill(String(HYBRID.kernel));
  await page.locator('#if-sigma').fill(String(HYBRID.sigma));
  r = await run(page);
  await compare(page, 'hybrid.png', 0, r[0], `${tag} hybrid`);
  await page.locator('#deepfloyd').screenshot({ path: `${ARTIFACTS}if-${tag}-hybrid.png` });
}

const pkgFiles = async () => (await readdir(pkgDir)).map((f) => join(pkgDir, f));

test('IF on WebGPU: a picked package runs all five modes and each equals dp if', async () => {
  const page = await open(gpuBrowser, '?backend=webgpu');
  assert.match(await page.locator('#backend').textContent(), /^WebGPU: /);
  // SwiftShader has no shader-f16: detected, and IF computes in f32.
  await page.waitForFunction(() => window.playground.deepfloyd.compute, null, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => window.playground.deepfloyd.compute), 'f32');
  assert.match(await page.locator('#if-limits').textContent(), /without f16 shaders.*no shader-f16: IF computes in f32\./);
  await pickFiles(page, await pkgFiles());
  assert.equal(await ifError(page), '', page.logs.join('\n'));
  assert.equal((await page.evaluate(() => window.playground.deepfloyd.model)).key, manifestKey);
  await pickEmbeddings(page, join(tmp, 'emb.safetensors'));
  assert.deepEqual(await page.evaluate(() => window.playground.deepfloyd.prompts), ['', P2, P1]);
  await allModes(page, 'webgpu');
  await page.context().close();
});

test('IF on the CPU: the raw diffusers folder converted in the page is dp convert\'s package, and all five modes equal dp if', async () => {
  const page = await open(cpuBrowser, '?backend=cpu');
  await pickFiles(page, [join(RAW, 'config.json'), join(RAW, 'diffusion_pytorch_model.safetensors')], 'f16');
  assert.equal(await ifError(page), '', page.logs.join('\n'));
  // The same package, byte for byte: the manifest (with every shard's sha256) hashes the same.
  assert.equal((await page.evaluate(() => window.playground.deepfloyd.model)).key, manifestKey);
  assert.match(await page.locator('#if-model').textContent(), /converted to f16 in the page/);
  await pickEmbeddings(page, join(tmp, 'emb.safetensors'));
  await allModes(page, 'cpu');
  await page.context().close();
});

test('IF by URL: byte progress, kept in the browser across a reload without a second download, and forgotten', async () => {
  let shardFetches = 0;
  const page = await open(cpuBrowser, '?backend=cpu', (p) => p.route('**/if-test/pkg/shard-*', (r) => { shardFetches++; return r.continue(); }));
  // Every text the status line shows while the package downloads.
  await page.evaluate(() => {
    window.seen = [];
    const el = document.getElementById('if-model');
    new MutationObserver(() => window.seen.push(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true });
  });
  await page.locator('#if-url').fill(`${site.url}if-test/pkg/manifest.json`);
  await page.locator('#if-fetch').click();
  await page.waitForFunction(() => window.playground.deepfloyd.busy, null, { timeout: 5000 }).catch(() => {});
  await ifIdle(page);
  assert.equal(await ifError(page), '', page.logs.join('\n'));
  assert.ok(shardFetches >= 1);
  const seen = await page.evaluate(() => window.seen);
  assert.ok(seen.some((t) => /^IF weights: [\d.]+ MB \/ [\d.]+ MB$/.test(t)), `no byte progress shown: ${JSON.stringify(seen)}`);
  const fetched = shardFetches;
  assert.match(await page.locator('#if-model').textContent(), /Loaded: .*kept in this browser/);
  await pickEmbeddings(page, join(tmp, 'emb.safetensors'));
  await page.reload();
  await page.waitForFunction(() => window.playground?.ready && window.playground.deepfloyd.model, null, { timeout: LOAD_MS });
  assert.equal(shardFetches, fetched, 'the reload fetched the shards again');
  assert.match(await page.locator('#if-model').textContent(), /from browser storage/);
  assert.deepEqual(await page.evaluate(() => window.playground.deepfloyd.prompts), ['', P2, P1], 'the embeddings were kept too');
  await setup(page, 'sample');
  await page.locator('#if-prompt').selectOption(P1);
  const r = await run(page);
  await compare(page, 'sample_a_red_square.png', 0, r[0], 'stored package text-to-image');
  assert.equal(await page.locator('#if-stored .row').count(), 1);
  await page.locator('#if-stored .forget').click();
  await ifIdle(page);
  assert.equal(await page.locator('#if-stored .row').count(), 0);
  assert.equal(await page.evaluate(() => window.playground.deepfloyd.model), null);
  await page.reload();
  await page.waitForFunction(() => window.playground?.ready, null, { timeout: LOAD_MS });
  await page.waitForTimeout(500);
  assert.equal(await page.evaluate(() => window.playground.deepfloyd.model), null, 'a forgotten package came back');
  await page.context().close();
});

test('IF: a run can be cancelled, and the page runs again after it', async () => {
  const page = await open(cpuBrowser, '?backend=cpu');
  await pickFiles(page, await pkgFiles());
  await pickEmbeddings(page, join(tmp, 'emb.safetensors'));
  await setup(page, 'sample');
  await page.locator('#if-stride').fill('1');
  await page.locator('#if-run').click();
  await page.waitForFunction(() => /step [1-9]\d* of 990/.test(document.getElementById('if-timing').textContent), null, { timeout: JOB_MS });
  assert.match(await page.locator('#if-timing').textContent(), /ms per step, about [\d.]+ s left/);
  await page.locator('#if-cancel').click();
  await ifIdle(page);
  assert.match(await page.locator('#if-timing').textContent(), /cancelled/);
  assert.equal(await page.locator('#if-run').isDisabled(), false);
  await page.locator('#if-stride').fill(String(STRIDE));
  await run(page);
  await page.context().close();
});

// The first worker script served is `patch`ed; every later one (a restarted engine) is as built.
const patchFirstWorker = (patch, counter) => (p) => p.route('**/deepfloyd-worker.js', async (route) => {
  const res = await route.fetch();
  const body = await res.text();
  await route.fulfill({ response: res, body: counter.served++ === 0 ? patch(body) : body });
});

// Stores the package by URL and the embeddings, runs text to image, and expects the engine to
// fail in that run and come back: restarted, with the weights from the browser's storage (no
// shard downloaded again), saying `said`, and drawing what dp draws.
async function expectRecovery(page, counter, said, what) {
  let shardFetches = 0;
  await page.route('**/if-test/pkg/shard-*', (r) => { shardFetches++; return r.continue(); });
  await page.locator('#if-url').fill(`${site.url}if-test/pkg/manifest.json`);
  await page.locator('#if-fetch').click();
  await page.waitForFunction(() => window.playground.deepfloyd.busy, null, { timeout: 5000 }).catch(() => {});
  await ifIdle(page);
  assert.equal(await ifError(page), '', page.logs.join('\n'));
  await pickEmbeddings(page, join(tmp, 'emb.safetensors'));
  const fetched = shardFetches;
  await setup(page, 'sample');
  await page.locator('#if-prompt').selectOption(P1);
  await page.locator('#if-run').click();
  // The new worker takes the package from the browser's storage, and the page says what happened.
  await page.waitForFunction(() => window.playground.ready && /from browser storage/.test(document.getElementById('if-model').textContent), null, { timeout: JOB_MS })
    .catch((e) => { throw new Error(`${what}: no restart: ${e.message}\n${page.logs.join('\n')}`); });
  const notice = await page.locator('#if-notice').textContent();
  if (process.env.IF_TEST_VERBOSE) console.log(`${what}: ${notice}`);
  assert.match(notice, said);
  assert.equal(counter.served, 2, `${what}: the engine was not restarted once`);
  assert.equal(shardFetches, fetched, `${what}: the restart downloaded the weights again`);
  await ifIdle(page);
  await page.locator('#if-prompt').selectOption(P1);
  const r = await run(page);
  await compare(page, 'sample_a_red_square.png', 0, r[0], `after ${what}`);
  await page.context().close();
}

test('IF: a run that crashes the engine restarts it, and the stored weights load again without a download', async () => {
  // The worker traps during its first IF run, as a wasm `unreachable` would.
  const counter = { served: 0 };
  const page = await open(cpuBrowser, '?backend=cpu', patchFirstWorker((body) =>
    body.replace('const j = job();', "const j = job(); throw new WebAssembly.RuntimeError('unreachable executed');"), counter));
  await expectRecovery(page, counter, /unreachable executed.*engine was restarted.*loaded again without a download/, 'a crashed run');
});

test('IF on WebGPU: a device lost mid-run restarts the engine, and the stored weights load again without a download', async () => {
  // The first worker keeps the GPUDevice the engine asks for and destroys it after the run's
  // first step: a real loss (device.lost resolves, later GPU calls fail), not a simulated trap.
  const counter = { served: 0 };
  const page = await open(gpuBrowser, '?backend=webgpu&ifcompute=f16', patchFirstWorker((body) => `const requestDevice = GPUAdapter.prototype.requestDevice;
GPUAdapter.prototype.requestDevice = async function (...a) { self.__device = await requestDevice.apply(this, a); return self.__device; };
${body}`.replace('const onStep = (run, runs, step, steps, x0, ms) => {',
    'const onStep = (run, runs, step, steps, x0, ms) => { if (step === 1 && self.__device) { self.__device.destroy(); self.__device = null; }'), counter));
  assert.match(await page.locator('#backend').textContent(), /^WebGPU: /);
  // f16 asked for on an adapter without shader-f16: said, and f32 used.
  await page.waitForFunction(() => window.playground.deepfloyd.compute, null, { timeout: 10_000 });
  assert.match(await page.locator('#if-limits').textContent(), /IF computes in f32 \(f16 was asked for\)/);
  await expectRecovery(page, counter, /GPU was lost.*Device was destroyed.*engine was restarted.*loaded again without a download/, 'a lost device');
});

test('IF: a full browser storage keeps the model in memory with a notice, and stores nothing', async () => {
  // The browser's quota runs out at the first shard written.
  const page = await open(cpuBrowser, '?backend=cpu', (p) => p.route('**/deepfloyd-worker.js', async (route) => {
    const res = await route.fetch();
    const body = (await res.text()).replace('const w = await h.createWritable();',
      "const w = await h.createWritable(); if (name.startsWith('shard-')) { await w.abort(); throw new DOMException('the quota is used up', 'QuotaExceededError'); }");
    await route.fulfill({ response: res, body });
  }));
  await pickFiles(page, await pkgFiles());
  assert.equal(await ifError(page), '', page.logs.join('\n'));
  assert.match(await page.locator('#if-notice').textContent(), /storage quota is too small .*stay in memory only/);
  assert.doesNotMatch(await page.locator('#if-model').textContent(), /kept in this browser/);
  assert.equal(await page.locator('#if-stored .row').count(), 0, 'a half-written package was listed');
  await pickEmbeddings(page, join(tmp, 'emb.safetensors'));
  await setup(page, 'sample');
  await page.locator('#if-prompt').selectOption(P1);
  const r = await run(page);
  await compare(page, 'sample_a_red_square.png', 0, r[0], 'memory-only model');
  await page.context().close();
});

// A safetensors file's tensors by name: dtype, shape and raw bytes.
function safetensors(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  delete header.__metadata__;
  return Object.fromEntries(Object.entries(header).map(([k, t]) =>
    [k, { dtype: t.dtype, shape: t.shape, bytes: buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]) }]));
}

test('IF: the course\'s .pth embeddings are read in the page exactly as torch saved them, and kept', async () => {
  // tests/reference/embeddings_pth.py wrote both files from the same torch tensors (f16, f32,
  // and views into a shared storage).
  const dir = 'tests/fixtures/deepfloyd/embeddings';
  const page = await open(cpuBrowser);
  await pickEmbeddings(page, join(dir, 'prompts.pth'));
  assert.equal(await ifError(page), '', page.logs.join('\n'));
  const want = safetensors(await readFile(join(dir, 'prompts.safetensors')));
  assert.deepEqual(await page.evaluate(() => window.playground.deepfloyd.prompts), Object.keys(want).sort());
  const stored = Buffer.from(await page.evaluate(async () => {
    const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('if-embeddings');
    return Array.from(new Uint8Array(await (await (await dir.getFileHandle('embeddings.safetensors')).getFile()).arrayBuffer()));
  }));
  const got = safetensors(stored);
  for (const [k, t] of Object.entries(want)) {
    assert.equal(got[k]?.dtype, t.dtype, k);
    assert.deepEqual(got[k].shape, t.shape, k);
    assert.ok(got[k].bytes.equals(t.bytes), `${k}: the page read other values than torch saved`);
  }
  await page.reload();
  await page.waitForFunction(() => window.playground?.ready && window.playground.deepfloyd.prompts.length, null, { timeout: LOAD_MS });
  assert.deepEqual(await page.evaluate(() => window.playground.deepfloyd.prompts), Object.keys(want).sort(), 'the embeddings were not kept');
  await page.context().close();
});

test('IF: bad inputs each get a clear message and nothing corrupt is stored', async () => {
  const bad = join(tmp, 'bad');
  await mkdir(bad, { recursive: true });
  const page = await open(cpuBrowser, '?backend=cpu', (p) => p.route('**/if-test/pkg/shard-00001.bin', async (route) => {
    const res = await route.fetch();
    const body = Buffer.from(await res.body());
    await route.fulfill({ response: res, body: body.subarray(0, body.length >> 1) });
  }));
  const expectError = async (re, what) => {
    await ifIdle(page);
    const e = await ifError(page);
    assert.match(e, re, `${what}: ${e}`);
  };
  // A truncated shard from a URL.
  await page.locator('#if-url').fill(`${site.url}if-test/pkg/manifest.json`);
  await page.locator('#if-fetch').click();
  await expectError(/cut short|bytes arrived/, 'truncated shard');
  // An altered shard picked from disk.
  const files = await pkgFiles();
  const altered = [];
  for (const f of files) {
    const to = join(bad, f.split('/').pop());
    await copyFile(f, to);
    if (f.endsWith('.bin')) { const b = await readFile(to); b[b.length >> 1] ^= 0xff; await writeFile(to, b); }
    altered.push(to);
  }
  await pickFiles(page, altered);
  await expectError(/sha256/, 'altered shard');
  // A manifest of another kind (the MNIST models').
  const mnist = join(tmp, 'mnist-manifest');
  await mkdir(mnist, { recursive: true });
  await copyFile('pkg/manifest.json', join(mnist, 'manifest.json'));
  await pickFiles(page, [join(mnist, 'manifest.json')]);
  await expectError(/if-unet|package manifest/, 'a manifest from another model');
  // A config with a block this UNet does not have.
  const cfgDir = join(tmp, 'bad-config');
  await mkdir(cfgDir, { recursive: true });
  const cfg = JSON.parse(await readFile(join(RAW, 'config.json'), 'utf8'));
  cfg.down_block_types = ['CrossAttnDownBlock2D', ...cfg.down_block_types.slice(1)];
  await writeFile(join(cfgDir, 'config.json'), JSON.stringify(cfg));
  await copyFile(join(RAW, 'diffusion_pytorch_model.safetensors'), join(cfgDir, 'diffusion_pytorch_model.safetensors'));
  await pickFiles(page, [join(cfgDir, 'config.json'), join(cfgDir, 'diffusion_pytorch_model.safetensors')]);
  await expectError(/CrossAttnDownBlock2D/, 'unsupported block');
  // Nothing of the above was stored.
  assert.equal(await page.locator('#if-stored .row').count(), 0, 'a failed load left something stored');
  // Embeddings for another model (wider tokens), and the course's .pth.
  await pickFiles(page, files);
  assert.equal(await ifError(page), '');
  await pickEmbeddings(page, join(tmp, 'wrong-width.safetensors'));
  await expectError(/takes \d+-wide tokens.*another model/, 'wrong-width embeddings');
  // The course's .pth is read, but its tokens are 8 wide.
  await pickEmbeddings(page, 'tests/fixtures/deepfloyd/embeddings/prompts.pth');
  await expectError(/takes \d+-wide tokens.*another model/, '.pth embeddings of another width');
  // A .pth cut short.
  const pth = await readFile('tests/fixtures/deepfloyd/embeddings/prompts.pth');
  await writeFile(join(tmp, 'cut.pth'), pth.subarray(0, pth.length - 100));
  await pickEmbeddings(page, join(tmp, 'cut.pth'));
  await expectError(/cut\.pth.*torch\.save/, 'a truncated .pth');
  await pickEmbeddings(page, join(tmp, 'emb.safetensors'));
  assert.equal(await ifError(page), '');
  // Not an image.
  await page.locator('#if-mode').selectOption('sdedit');
  await page.locator('#if-image').setInputFiles(join(tmp, 'emb.safetensors'));
  await expectError(/cannot be decoded as an image/, 'a non-image upload');
  // An empty and an all-white mask.
  await setup(page, 'inpaint');
  await page.locator('#if-clear').click();
  await page.locator('#if-run').click();
  await expectError(/mask is empty/, 'empty mask');
  await page.locator('#if-invert').click();
  await page.locator('#if-run').click();
  await expectError(/covers the whole image/, 'all-white mask');
  await page.locator('#deepfloyd').screenshot({ path: `${ARTIFACTS}if-bad-input.png` });
  await page.context().close();
});
