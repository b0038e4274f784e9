// Browser tests: headless Chromium (WebGPU on SwiftShader, a CPU-emulated GPU) driven by
// Playwright against the trunk build in dist/, served under a GitHub-Pages-like sub-path.
// Run: node --test tests/browser/   (after `trunk build`; scripts/test.sh does both)
// Screenshots go to tests/browser/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const BASE = '/diffusion-playground/';
const ARTIFACTS = new URL('./artifacts/', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--disable-dev-shm-usage'];
// SwiftShader runs the GPU on the CPU: generous, but bounded.
const LOAD_MS = 240_000;
const JOB_MS = 300_000;

let site, gpuBrowser, noGpuBrowser;

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  site = await serve({ dir: 'dist', base: BASE });
  gpuBrowser = await chromium.launch({ executablePath: CHROMIUM, args: [...FLAGS, '--enable-unsafe-webgpu'] });
  noGpuBrowser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
});

after(async () => {
  await gpuBrowser?.close();
  await noGpuBrowser?.close();
  site?.server.close();
});

async function open(browser, query = '', setup, viewport = { width: 1200, height: 1400 }) {
  const page = await browser.newPage({ viewport });
  const logs = [];
  // Every request the page makes that fails (a missing favicon, a wrong asset URL).
  page.notFound = [];
  page.on('response', (r) => { if (r.status() === 404) page.notFound.push(r.url()); });
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  page.logs = logs;
  if (setup) await setup(page);
  await page.goto(site.url + query);
  return page;
}

async function waitReady(page) {
  try {
    await page.waitForFunction(() => window.playground?.ready || window.playground?.errors(), null, { timeout: LOAD_MS });
  } catch (e) {
    throw new Error(`page never became ready: ${e.message}\n${page.logs.join('\n')}`);
  }
  const error = await page.locator('#error').textContent();
  assert.equal(await page.locator('#error').isHidden(), true, `page error: ${error}\n${page.logs.join('\n')}`);
}

async function set(page, id, value) {
  await page.locator(`#${id}`).fill(String(value));
  await page.locator(`#${id}`).dispatchEvent('input');
}

async function waitIdle(page) {
  await page.waitForFunction(() => !document.getElementById('gen-one').disabled || window.playground?.errors(), null, { timeout: JOB_MS });
}

test('the site lives under the project sub-path and its root is elsewhere', async () => {
  const root = await fetch(site.url.replace(BASE, '/'));
  assert.equal(root.status, 404);
  const page = await open(gpuBrowser);
  const html = await page.content();
  assert.ok(!/(src|href)="\/(?!\/)/.test(html), 'no absolute asset URLs: they would escape the sub-path');
  await waitReady(page);
  await page.close();
});

test('WebGPU: digit 7 with a fixed seed is drawn, and the in-page classifier reads the canvas as 7', async () => {
  const page = await open(gpuBrowser, '?backend=webgpu');
  await waitReady(page);
  assert.match(await page.locator('#backend').textContent(), /^WebGPU: /);
  await page.locator('label.digit-pick', { hasText: '7' }).click();
  await set(page, 'steps', 10);
  await set(page, 'guidance', 5);
  await page.locator('#seed').fill('0');
  await page.locator('#gen-one').click();
  await page.waitForFunction(() => /classifier: /.test(document.getElementById('one-verdict').textContent) || window.playground?.errors(), null, { timeout: JOB_MS });
  await page.screenshot({ path: `${ARTIFACTS}webgpu-digit7.png`, fullPage: true });
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  // Read the pixels the user sees back from the canvas and ask the page's classifier.
  const pixels = await page.evaluate(() => window.playground.readDigit('one'));
  assert.ok(Math.max(...pixels) > 0.5 && Math.min(...pixels) < 0.1, 'the canvas holds a digit, not a flat image');
  const [digit, confidence] = await page.evaluate((p) => window.playground.classify(p), pixels);
  assert.equal(digit, 7, `classified as ${digit} (${confidence})`);
  assert.ok(confidence > 0.5, `confidence ${confidence}`);
  assert.match(await page.locator('#one-verdict').textContent(), /classifier: 7, \d+%/);
  assert.match(await page.locator('#timing').textContent(), /step 10\/10, \d+ ms per step, [\d.]+ s in total/);
  await page.close();
});

test('WebGPU: the 4 x 10 grid renders 40 digits, each with a verdict', async () => {
  const page = await open(gpuBrowser, '?backend=webgpu');
  await waitReady(page);
  await set(page, 'steps', 1);
  await page.locator('#gen-grid').click();
  await page.waitForFunction(() => [...document.querySelectorAll('#grid figcaption')].every((c) => /\d, \d+%/.test(c.textContent)) || window.playground?.errors(), null, { timeout: JOB_MS });
  await page.screenshot({ path: `${ARTIFACTS}webgpu-grid.png`, fullPage: true });
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  const stats = await page.evaluate(() => [...document.querySelectorAll('#grid canvas')].map((c) => {
    const d = c.getContext('2d').getImageData(0, 0, 28, 28).data;
    let lo = 255, hi = 0;
    for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
    return hi - lo;
  }));
  assert.equal(stats.length, 40);
  assert.ok(stats.every((range) => range > 64), `every grid cell has content: ${stats}`);
  await page.close();
});

test('WebGPU: a running generation can be cancelled and the page stays usable', async () => {
  const page = await open(gpuBrowser, '?backend=webgpu');
  await waitReady(page);
  await set(page, 'steps', 100);
  await page.locator('#gen-one').click();
  await page.waitForFunction(() => /^step [1-9]/.test(document.getElementById('timing').textContent), null, { timeout: JOB_MS });
  // The UI thread answers while the worker computes.
  const t0 = Date.now();
  await page.evaluate(() => 1 + 1);
  assert.ok(Date.now() - t0 < 2000, 'the page responds during generation');
  await page.locator('#cancel').click();
  await page.waitForFunction(() => /cancelled/.test(document.getElementById('timing').textContent), null, { timeout: JOB_MS });
  await waitIdle(page);
  assert.equal(await page.locator('#gen-one').isDisabled(), false);
  await page.close();
});

// Draws a "1"-like stroke and a bar on the playground's pad with the mouse.
async function drawOne(page) {
  const box = await page.locator('#pad').boundingBox();
  await page.mouse.move(box.x + 140, box.y + 40);
  await page.mouse.down();
  await page.mouse.move(box.x + 140, box.y + 240, { steps: 12 });
  await page.mouse.up();
  await page.mouse.move(box.x + 90, box.y + 240);
  await page.mouse.down();
  await page.mouse.move(box.x + 190, box.y + 240, { steps: 8 });
  await page.mouse.up();
}

const shipped = async (name) => JSON.parse(await readFile('pkg/manifest.json', 'utf8')).models.some((m) => m.name === name);

// Whether the model menu offers `name`; an option left disabled must mean pkg/ lacks the model.
async function offered(page, name) {
  if (!(await page.locator(`#model option[value="${name}"]`).isDisabled())) return true;
  assert.ok(!(await shipped(name)), `${name} is in pkg/ but the page did not enable it`);
  return false;
}

test('WebGPU: the denoiser playground: fetched on first use, then a drawn digit is noised and denoised', async (t) => {
  let fetches = 0;
  const page = await open(gpuBrowser, '?backend=webgpu', (p) => p.route('**/pkg/denoiser.bpk', (r) => { fetches++; return r.continue(); }));
  await waitReady(page);
  assert.equal(fetches, 0, 'the denoiser was fetched before the playground was used');
  if (await page.locator('#denoise').isDisabled()) {
    assert.ok(!(await shipped('denoiser')), 'the denoiser is in pkg/ but the page did not enable it');
    // The page says why the playground is off.
    assert.ok(await page.locator('#denoiser-missing').isVisible(), 'no note explains the disabled playground');
    assert.match(await page.locator('#denoiser-missing').textContent(), /without the denoiser model/);
    await page.screenshot({ path: `${ARTIFACTS}webgpu-denoiser-missing.png`, fullPage: true });
    await page.close();
    t.skip('no denoiser in pkg/manifest.json (the page says so)');
    return;
  }
  await drawOne(page);
  await set(page, 'sigma', 0.5);
  assert.ok(await page.locator('#denoiser-missing').isHidden(), 'the missing-denoiser note shows while the denoiser is loaded');
  await page.locator('#denoise').click();
  await waitIdle(page);
  await page.screenshot({ path: `${ARTIFACTS}webgpu-denoiser.png`, fullPage: true });
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  assert.equal(fetches, 1, 'the first use fetches the denoiser once');
  assert.equal(await page.locator('#denoised-cap').textContent(), 'denoised');
  const [clean, noisy, denoised] = await Promise.all(['clean', 'noisy', 'denoised'].map((id) => page.evaluate((i) => window.playground.readDigit(i), id)));
  const mse = (a, b) => a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / a.length;
  assert.ok(Math.max(...clean) > 0.9, 'the drawing reached the 28x28 input');
  assert.ok(mse(noisy, clean) > 0.05, `noise was added (mse ${mse(noisy, clean)})`);
  assert.ok(mse(denoised, clean) < mse(noisy, clean) / 2, `denoised (${mse(denoised, clean)}) is much closer to the drawing than noisy (${mse(noisy, clean)})`);
  await page.close();
});

test('CPU: the time-only model draws an unconditional digit', async (t) => {
  const page = await open(gpuBrowser, '?backend=cpu');
  await waitReady(page);
  if (!(await offered(page, 'time_flow'))) return t.skip('no time_flow in pkg/manifest.json');
  await page.locator('#model').selectOption('time_flow');
  assert.equal(await page.locator('#digits').evaluate((e) => e.disabled), true, 'the digit picker is off for an unconditional model');
  await set(page, 'steps', 20);
  await page.locator('#gen-one').click();
  await page.waitForFunction(() => /classifier: /.test(document.getElementById('one-verdict').textContent) || window.playground?.errors(), null, { timeout: JOB_MS });
  await page.screenshot({ path: `${ARTIFACTS}cpu-time-only.png`, fullPage: true });
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  const pixels = await page.evaluate(() => window.playground.readDigit('one'));
  assert.ok(Math.max(...pixels) > 0.5 && Math.min(...pixels) < 0.1, 'the canvas holds a digit, not a flat image');
  await page.close();
});

test("CPU: recipe 5's flow is fetched on first use and draws the digit asked for", async (t) => {
  let fetches = 0;
  const page = await open(gpuBrowser, '?backend=cpu', (p) => p.route('**/pkg/class_flow_constant.bpk', (r) => { fetches++; return r.continue(); }));
  await waitReady(page);
  if (!(await offered(page, 'class_flow_constant'))) return t.skip('no class_flow_constant in pkg/manifest.json');
  assert.equal(fetches, 0, "recipe 5's flow was fetched before it was chosen");
  await page.locator('#model').selectOption('class_flow_constant');
  assert.equal(await page.locator('#digits').evaluate((e) => e.disabled), false, 'the digit picker is on for a class-conditioned model');
  await page.locator('label.digit-pick', { hasText: '3' }).click();
  await set(page, 'steps', 20);
  await set(page, 'guidance', 5);
  await page.locator('#seed').fill('0');
  const verdict = () => page.waitForFunction(() => /classifier: /.test(document.getElementById('one-verdict').textContent) || window.playground?.errors(), null, { timeout: JOB_MS });
  await page.locator('#gen-one').click();
  await verdict();
  await page.screenshot({ path: `${ARTIFACTS}cpu-recipe5.png`, fullPage: true });
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  assert.equal(fetches, 1, 'the first use fetches the model once');
  assert.match(await page.locator('#one-verdict').textContent(), /classifier: 3, \d+%/);
  assert.match(await page.locator('#timing').textContent(), /step 20\/20, \d+ ms per step/);
  // The next digit uses the model already on the device.
  await page.locator('label.digit-pick', { hasText: '8' }).click();
  await page.locator('#gen-one').click();
  await verdict();
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  assert.match(await page.locator('#one-verdict').textContent(), /classifier: 8, \d+%/);
  assert.equal(fetches, 1, 'a second digit fetched the model again');
  await page.close();
});

test('a software-emulated WebGPU adapter is passed over for the faster CPU backend, with a notice', async () => {
  const page = await open(gpuBrowser);
  await waitReady(page);
  assert.match(await page.locator('#backend').textContent(), /^CPU fallback/);
  assert.match(await page.locator('#notice').textContent(), /software emulation .*swiftshader.*backend=webgpu/i);
  await page.close();
});

test('without WebGPU the page falls back to the CPU with a visible notice, and still generates', async () => {
  const page = await open(noGpuBrowser);
  await waitReady(page);
  assert.match(await page.locator('#backend').textContent(), /^CPU fallback/);
  assert.equal(await page.locator('#notice').isVisible(), true);
  assert.match(await page.locator('#notice').textContent(), /WebGPU.*CPU/);
  await set(page, 'steps', 3);
  await page.locator('#gen-one').click();
  await page.waitForFunction(() => /classifier: /.test(document.getElementById('one-verdict').textContent) || window.playground?.errors(), null, { timeout: JOB_MS });
  await page.screenshot({ path: `${ARTIFACTS}cpu-fallback.png`, fullPage: true });
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  await page.close();
});

test('a corrupt weights file gives a readable error in the page', async () => {
  const page = await open(noGpuBrowser, '', async (p) => {
    await p.route('**/pkg/class_flow.bpk', async (route) => {
      const res = await route.fetch();
      const body = Buffer.from(await res.body());
      body[body.length >> 1] ^= 0xff; // one flipped byte
      await route.fulfill({ response: res, body });
    });
  });
  await page.waitForFunction(() => window.playground?.errors(), null, { timeout: LOAD_MS });
  const text = await page.locator('#error').textContent();
  await page.screenshot({ path: `${ARTIFACTS}corrupt-weights.png`, fullPage: true });
  assert.match(text, /class_flow/);
  assert.match(text, /sha256 .* does not match/);
  // The rest of the page still works: the class-conditioned model is marked unavailable.
  await page.waitForFunction(() => window.playground.ready, null, { timeout: LOAD_MS });
  assert.equal(await page.locator('#model option[value="class_flow"]').isDisabled(), true);
  await page.close();
});

test('a denoiser that fails to download gives a readable error, and the next try fetches it again', async (t) => {
  if (!(await shipped('denoiser'))) return t.skip('no denoiser in pkg/manifest.json');
  let fetches = 0;
  const page = await open(noGpuBrowser, '', (p) => p.route('**/pkg/denoiser.bpk',
    (r) => (++fetches === 1 ? r.fulfill({ status: 503, body: 'busy' }) : r.continue())));
  await waitReady(page);
  await drawOne(page);
  await page.locator('#denoise').click();
  await page.waitForFunction(() => window.playground?.errors(), null, { timeout: JOB_MS });
  assert.match(await page.locator('#denoise-error').textContent(), /Denoising failed: could not load model 'denoiser' \(\d+\.\d MB\): .*HTTP 503/);
  await page.waitForFunction(() => !document.getElementById('denoise').disabled, null, { timeout: JOB_MS });
  await page.locator('#denoise').click();
  await waitIdle(page);
  assert.equal(await page.evaluate(() => window.playground.errors()), '');
  assert.equal(fetches, 2, 'the second try fetched the denoiser again');
  const denoised = await page.evaluate(() => window.playground.readDigit('denoised'));
  assert.ok(Math.max(...denoised) > 0.5, 'the denoised digit was drawn');
  // Once loaded it stays loaded.
  await set(page, 'noise-seed', 1);
  await page.locator('#denoise').click();
  await waitIdle(page);
  assert.equal(fetches, 2, 'a loaded denoiser is not fetched again');
  await page.close();
});

test('the model menu, its lazy loading and the slider limits come from the manifest', async () => {
  // A manifest whose page hints differ from the shipped ones: another label and order, other
  // limits, and the time-only model held back until first use.
  const page = await open(noGpuBrowser, '', (p) => p.route('**/pkg/manifest.json', async (route) => {
    const res = await route.fetch();
    const m = JSON.parse(await res.text());
    const flow = m.models.find((e) => e.name === 'class_flow');
    flow.page = { ...flow.page, label: 'digits on request', steps: [2, 40, 7], guidance: [1, 3, 2] };
    const time = m.models.find((e) => e.name === 'time_flow');
    time.page = { ...time.page, at_start: false };
    m.models = [time, ...m.models.filter((e) => e !== time)];
    await route.fulfill({ response: res, body: JSON.stringify(m) });
  }));
  await waitReady(page);
  const options = await page.locator('#model option').evaluateAll((os) => os.map((o) => [o.value, o.textContent]));
  assert.deepEqual(options.map(([v]) => v).slice(0, 2), ['time_flow', 'class_flow'], 'the manifest\'s order');
  assert.ok(options.some(([v, t]) => v === 'class_flow' && t === 'digits on request'), JSON.stringify(options));
  await page.selectOption('#model', 'class_flow');
  const limits = await page.evaluate(() => ['steps', 'guidance'].map((id) => {
    const el = document.getElementById(id);
    return [Number(el.min), Number(el.max)];
  }));
  assert.deepEqual(limits, [[2, 40], [1, 3]]);
  const onDemand = await page.evaluate(() => window.playground.onDemand);
  assert.ok(onDemand.includes('time_flow') && !onDemand.includes('class_flow'), JSON.stringify(onDemand));
  await page.close();
});

test('a missing manifest stops start-up with a readable error', async () => {
  const page = await open(noGpuBrowser, '', (p) => p.route('**/pkg/manifest.json', (r) => r.fulfill({ status: 404, body: 'nope' })));
  await page.waitForFunction(() => window.playground?.errors(), null, { timeout: LOAD_MS });
  assert.match(await page.locator('#error').textContent(), /could not start: pkg\/manifest.json: HTTP 404/);
  await page.close();
});

test('the buttons follow the worker: a model change mid-run keeps Generate off and Cancel on', async () => {
  const page = await open(noGpuBrowser);
  await waitReady(page);
  assert.deepEqual(page.notFound, [], 'no request of the page 404s (favicon included)');
  await set(page, 'steps', 100);
  await page.locator('#gen-grid').click();
  await page.waitForFunction(() => /^step [1-9]/.test(document.getElementById('timing').textContent), null, { timeout: JOB_MS });
  await page.locator('#model').selectOption('time_flow');
  assert.equal(await page.locator('#gen-one').isDisabled(), true, 'Generate stays off while the job runs');
  assert.equal(await page.locator('#gen-grid').isDisabled(), true);
  assert.equal(await page.locator('#cancel').isDisabled(), false, 'Cancel stays on while the job runs');
  assert.match(await page.locator('#grid-caption').textContent(), /40 unconditional samples/);
  await page.locator('#cancel').click();
  assert.match(await page.locator('#timing').textContent(), /cancelling after the current step/);
  assert.equal(await page.locator('#cancel').isDisabled(), true, 'one Cancel per job');
  await page.waitForFunction(() => /cancelled/.test(document.getElementById('timing').textContent), null, { timeout: JOB_MS });
  await waitIdle(page);
  assert.equal(await page.locator('#cancel').isDisabled(), true);
  await page.locator('#model').selectOption('class_flow');
  assert.match(await page.locator('#grid-caption').textContent(), /4 samples of each digit/);
  await page.close();
});

test('a bad seed is refused next to the Generate button, not changed silently', async () => {
  const page = await open(noGpuBrowser);
  await waitReady(page);
  for (const bad of ['-1', '1.5', '4294967296']) {
    await page.locator('#seed').fill(bad);
    await page.locator('#gen-one').click();
    await page.waitForFunction(() => !document.getElementById('gen-error').hidden, null, { timeout: JOB_MS });
    assert.match(await page.locator('#gen-error').textContent(), /seed must be a whole number from 0 to 4294967295/);
    assert.equal(await page.locator('#error').isHidden(), true, 'the header stays for start-up errors');
    assert.equal(await page.locator('#gen-one').isDisabled(), false, 'the page stays usable');
  }
  await page.close();
});

test('a missing classifier is said under the digits, and stays said after a generation', async () => {
  const page = await open(noGpuBrowser, '', (p) => p.route('**/pkg/classifier.bpk', (r) => r.fulfill({ status: 404, body: 'gone' })));
  await page.waitForFunction(() => window.playground?.ready, null, { timeout: LOAD_MS });
  assert.equal(await page.locator('#no-classifier').isHidden(), false);
  await set(page, 'steps', 2);
  await page.locator('#gen-one').click();
  await page.waitForFunction(() => /in total/.test(document.getElementById('timing').textContent), null, { timeout: JOB_MS });
  assert.equal(await page.locator('#no-classifier').isHidden(), false, 'still shown after Generate');
  await page.close();
});

test('on a phone (390 x 844) the digit picker, the model menu and the grid verdicts fit the screen', async () => {
  const page = await open(noGpuBrowser, '', null, { width: 390, height: 844 });
  await waitReady(page);
  const right = async (sel) => { const b = await page.locator(sel).boundingBox(); return b.x + b.width; };
  assert.ok(await right('#digits label:last-child') <= 390, 'the digit 9 is on screen');
  const card = await page.locator('#generate').boundingBox();
  assert.ok(await right('#model') <= card.x + card.width, 'the model menu stays inside its card');
  assert.ok(await right('#grid figure:nth-child(10)') <= 390, 'the grid fits');
  await set(page, 'steps', 1);
  await page.locator('#gen-grid').click();
  await page.waitForFunction(() => [...document.querySelectorAll('#grid figcaption')].every((c) => /\d, \d+%/.test(c.textContent)), null, { timeout: JOB_MS });
  assert.equal(await page.locator('#grid figcaption').first().isVisible(), true, 'verdicts are shown');
  await page.screenshot({ path: `${ARTIFACTS}phone.png`, fullPage: true });
  await page.close();
});

test('a crashed engine keeps its message and its buttons off', async () => {
  // The worker traps on its first generation, as a wasm `unreachable` would.
  const page = await open(noGpuBrowser, '', (p) => p.route('**/worker.js', async (route) => {
    const res = await route.fetch();
    const body = (await res.text()).replace('async function generate({', 'async function generate({ crash = true, ') 
      .replace('const job = current;', "const job = current; if (crash) throw new WebAssembly.RuntimeError('unreachable executed');");
    await route.fulfill({ response: res, body });
  }));
  await waitReady(page);
  await page.locator('#gen-one').click();
  await page.waitForFunction(() => !document.getElementById('gen-error').hidden, null, { timeout: JOB_MS });
  const shown = await page.evaluate(() => window.playground.errors());
  assert.match(shown, /compute engine crashed \(unreachable executed\)\. Reload the page/);
  assert.doesNotMatch(shown, /Generation failed/);
  for (const id of ['gen-one', 'gen-grid', 'cancel', 'denoise']) assert.equal(await page.locator(`#${id}`).isDisabled(), true, `${id} stays off`);
  await page.close();
});
