// Browser benchmark of DeepFloyd IF (a command, not a test): headless Chromium on WebGPU
// (SwiftShader here, or whatever adapter the browser offers) and on the CPU fallback. For the
// tiny test model (tests/fixtures/deepfloyd/tiny_m, 16x16) or an IF-I-M-shaped package of random
// weights (`dp bench-if --variant M --package-out`, 64x64), it prints the time to fetch, verify
// and load the package by URL, to load it again from the browser's storage after a reload, and
// the ms per guided UNet step (batch 2: the prompt and the null prompt) of text to image.
// On a GPU with shader-f16, IF computes in f16 (--compute f32 compares).
//   node tests/browser/bench-if.mjs [--variant tiny|M] [--stride 30] [--only webgpu|cpu] [--scheme q8] [--compute auto|f16|f32]
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const variant = arg('--variant', 'tiny');
const stride = Number(arg('--stride', variant === 'tiny' ? 30 : 495));
const only = arg('--only', null);
const scheme = arg('--scheme', 'q8');
const compute = arg('--compute', 'auto');
const DP = process.env.DP || 'target/release/dp';
const FLAGS = ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--disable-dev-shm-usage', '--enable-unsafe-webgpu'];
const TIMEOUT = 3_600_000;

const tmp = await mkdtemp(join(tmpdir(), 'dp-bench-if-'));
const pkg = join(tmp, 'pkg');
let width;
if (variant === 'tiny') {
  execFileSync(DP, ['convert', '--unet', 'tests/fixtures/deepfloyd/tiny_m/unet', '--out', pkg, '--scheme', scheme], { stdio: 'inherit' });
  width = JSON.parse(await readFile('tests/fixtures/deepfloyd/tiny_m/unet/config.json', 'utf8')).encoder_hid_dim;
} else {
  execFileSync(DP, ['bench-if', '--variant', variant, '--package-out', pkg, '--scheme', scheme], { stdio: 'inherit' });
  width = 4096;
}
// Embeddings: the null prompt and one prompt, [77, width] f32.
const header = {};
const parts = [];
['', 'a prompt'].forEach((p, k) => {
  const v = new Float32Array(77 * width).map((_, i) => Math.sin(0.37 * i + 1.3 * k));
  header[p] = { dtype: 'F32', shape: [77, width], data_offsets: [k * v.byteLength, (k + 1) * v.byteLength] };
  parts.push(Buffer.from(v.buffer));
});
let json = JSON.stringify(header);
json += ' '.repeat((8 - (json.length % 8)) % 8);
const len = Buffer.alloc(8);
len.writeBigUInt64LE(BigInt(json.length));
await writeFile(join(tmp, 'emb.safetensors'), Buffer.concat([len, Buffer.from(json), ...parts]));

const site = await serve({ dir: 'dist', base: '/', mounts: { 'bench/': tmp } });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: FLAGS });
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
for (const backend of ['webgpu', 'cpu']) {
  if (only && only !== backend) continue;
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${site.url}?backend=${backend}&ifcompute=${compute}`);
  await page.waitForFunction(() => window.playground?.ready || window.playground?.errors(), null, { timeout: TIMEOUT });
  const idle = () => page.waitForFunction(() => !window.playground.deepfloyd.busy, null, { timeout: TIMEOUT });
  const failed = async (what) => {
    const e = await page.evaluate(() => window.playground.deepfloyd.errors());
    if (e) { console.log(`${backend}: ${what} failed: ${e}`); return true; }
    return false;
  };
  let t0 = Date.now();
  await page.evaluate((url) => window.playground.deepfloyd.fetchUrl(url).catch(() => {}), `${site.url}bench/pkg/manifest.json`);
  await idle();
  const loadMs = Date.now() - t0;
  if (await failed('loading')) { await context.close(); continue; }
  await page.locator('#if-emb').setInputFiles(join(tmp, 'emb.safetensors'));
  await page.waitForTimeout(300);
  await idle();
  t0 = Date.now();
  await page.reload();
  await page.waitForFunction(() => window.playground?.ready && window.playground.deepfloyd.model, null, { timeout: TIMEOUT });
  await idle();
  const storedMs = Date.now() - t0;
  await page.locator('#if-mode').selectOption('sample');
  await page.locator('#if-prompt').selectOption('a prompt');
  await page.locator('#if-stride').fill(String(stride));
  await page.locator('#if-guidance').fill('7');
  const r = await page.evaluate(() => window.playground.deepfloyd.run());
  if (await failed('the run') || !r) { await context.close(); continue; }
  const result = {
    backend: await page.locator('#backend').textContent(),
    compute: await page.evaluate(() => window.playground.deepfloyd.compute),
    model: variant === 'tiny' ? 'tiny_m (16x16)' : `IF-I-${variant} random weights (64x64)`,
    package: (await page.evaluate(() => window.playground.deepfloyd.model)).bytes,
    scheme,
    load_by_url_ms: loadMs,
    reload_from_storage_ms: storedMs,
    guided_steps: r.stepMs.length,
    first_step_ms: Math.round(r.stepMs[0]),
    guided_step_ms_median: Math.round(median(r.stepMs.slice(1).length ? r.stepMs.slice(1) : r.stepMs)),
    user_agent: await page.evaluate(() => navigator.userAgent),
  };
  console.log(`${backend}:`, JSON.stringify(result, null, 2));
  await context.close();
}
await browser.close();
site.server.close();
await rm(tmp, { recursive: true, force: true });
