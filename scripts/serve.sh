#!/usr/bin/env bash
# The main job: set up a fresh machine, build the page with the shipped MNIST weights from pkg/,
# and serve it. Usage: bash scripts/serve.sh [PORT] [--address ADDR]
#   PORT     default 8080
#   ADDR     default 127.0.0.1; 0.0.0.0 serves other machines too (a container, a remote box)
# The page is rebuilt only when its sources changed since the last build (scripts/build-web.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
port=8080
address=127.0.0.1
while [ $# -gt 0 ]; do
  case "$1" in
    --address) address="${2:?--address needs a value, e.g. 0.0.0.0}"; shift 2 ;;
    --address=*) address="${1#--address=}"; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *[!0-9]*|'') echo "serve.sh: '$1' is not a port number (usage: bash scripts/serve.sh [PORT] [--address ADDR])" >&2; exit 2 ;;
    *) port="$1"; shift ;;
  esac
done
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
  echo "serve.sh: port $port is outside 1-65535" >&2; exit 2
fi
bash scripts/setup.sh web
# Before the (long) build: is the port free on that address?
command -v node >/dev/null && node -e '
  const s = require("net").createServer();
  s.once("error", (e) => { console.error(`serve.sh: cannot listen on ${process.argv[2]}:${process.argv[1]}: ${e.code === "EADDRINUSE" ? "the port is in use (stop the other server, or give another PORT)" : e.message}`); process.exit(1); });
  s.listen(Number(process.argv[1]), process.argv[2], () => s.close());' "$port" "$address"
bash scripts/build-web.sh
exec node tests/browser/serve.mjs --dir dist --port "$port" --host "$address"
