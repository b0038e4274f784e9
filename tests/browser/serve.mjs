// A static file server for dist/ (no dependencies). Serves the site under a base path, like
// GitHub Pages serves a project site under /<repo>/, and 404s everything outside it. `mounts`
// ({'sub/': dir}) serve other folders under the base path too (the tests' IF packages).
//   node tests/browser/serve.mjs [--dir dist] [--base /] [--port 8080]
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.wasm': 'application/wasm', '.json': 'application/json; charset=utf-8',
  '.png': 'image/png', '.gif': 'image/gif', '.svg': 'image/svg+xml', '.ico': 'image/x-icon',
};

export function serve({ dir = 'dist', base = '/', port = 0, host = '127.0.0.1', mounts = {} } = {}) {
  const roots = Object.entries(mounts).map(([prefix, d]) => [prefix, resolve(d)]);
  if (!base.endsWith('/')) base += '/';
  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://x');
      let path = decodeURIComponent(url.pathname);
      if (path === base.slice(0, -1)) { res.writeHead(301, { location: base }); return res.end(); }
      if (!path.startsWith(base)) { res.writeHead(404); return res.end('not found (the site lives under ' + base + ')'); }
      path = normalize(path.slice(base.length) || 'index.html');
      if (path.startsWith('..')) { res.writeHead(403); return res.end(); }
      const mount = roots.find(([prefix]) => path.startsWith(prefix));
      let file = mount ? join(mount[1], path.slice(mount[0].length)) : join(resolve(dir), path);
      if ((await stat(file).catch(() => null))?.isDirectory()) file = join(file, 'index.html');
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-cache' });
      res.end(body);
    } catch {
      res.writeHead(404); res.end('not found');
    }
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok({ server, url: `http://${host}:${server.address().port}${base}` }));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
  const dir = arg('--dir', 'dist');
  if (!(await stat(join(dir, 'index.html')).catch(() => null))) {
    console.error(`error: ${dir}/index.html not found: build the site first (trunk build, see README)`);
    process.exit(1);
  }
  const port = Number(arg('--port', 8080));
  const host = arg('--host', '127.0.0.1');
  try {
    const { url } = await serve({ dir, base: arg('--base', '/'), port, host });
    console.log(`Serving ${dir}/ at ${url}  (Ctrl-C to stop)`);
  } catch (e) {
    const why = e.code === 'EADDRINUSE' ? 'the port is in use (stop the other server, or choose another port)'
      : e.code === 'EADDRNOTAVAIL' ? 'this machine has no such address' : e.message;
    console.error(`error: cannot listen on ${host}:${port}: ${why}`);
    process.exit(1);
  }
}
