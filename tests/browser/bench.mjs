// Browser benchmark (a command, not a test): opens the built page in headless Chromium in its
// `?bench` mode, once on WebGPU (SwiftShader here, or whatever adapter the browser offers) and
// once on the CPU fallback, and prints what the page measured: load -> first digit, ms per
// sampling step for one guided digit (model batch 2) and for the guided 4x10 grid (batch 80).
//   node tests/browser/bench.mjs [--steps 5] [--grid-steps 1] [--only webgpu|cpu]
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const steps = Number(arg('--steps', 5));
const gridSteps = Number(arg('--grid-steps', 1));
const only = arg('--only', null);
const FLAGS = ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--disable-dev-shm-usage', '--enable-unsafe-webgpu'];

const site = await serve({ dir: 'dist', base: '/' });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: FLAGS });
const results = {};
for (const backend of ['webgpu', 'cpu']) {
  if (only && only !== backend) continue;
  const page = await browser.newPage();
  await page.goto(`${site.url}?bench&backend=${backend}&bench-steps=${steps}&bench-grid-steps=${gridSteps}`);
  await page.waitForFunction(() => document.getElementById('bench').dataset.done || !document.getElementById('error').hidden, null, { timeout: 1_800_000 });
  if (!(await page.locator('#error').isHidden())) throw new Error(`${backend}: ${await page.locator('#error').textContent()}`);
  results[backend] = JSON.parse(await page.locator('#bench').textContent());
  console.log(`${backend}:`, JSON.stringify(results[backend], null, 2));
  await page.close();
}
await browser.close();
site.server.close();
