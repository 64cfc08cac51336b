#!/usr/bin/env bash
# Builds pdrelay, starts a local receiver that prints what it gets and a daemon with
# demo/config.toml, then sends one event with `pdrelay send` and one as a spool drop-file, and
# shows them arriving. Nothing leaves this machine. KEEP=1 leaves both running for you to play.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin pdrelay --example receiver
target="${CARGO_TARGET_DIR:-target}"
bin="$target/debug/pdrelay"
if [ -S demo/state/run/admin.sock ] && "$bin" queue status --config demo/config.toml >/dev/null 2>&1; then
  echo "a demo daemon is still running (KEEP=1?); stop it first: pkill -f 'examples/receiver'; pkill -f 'pdrelay daemon'" >&2
  exit 1
fi
rm -rf demo/state && mkdir -p demo/state/spool
export PDRELAY_CONFIG=demo/config.toml

"$target/debug/examples/receiver" 127.0.0.1:18765 > demo/state/received.log 2> demo/state/receiver.err &
receiver=$!
"$bin" daemon 2> demo/state/daemon.log &
daemon=$!
cleanup() { kill "$daemon" "$receiver" 2>/dev/null || true; wait 2>/dev/null || true; }
[ "${KEEP:-}" = 1 ] || trap cleanup EXIT

for _ in $(seq 100); do [ -S demo/state/run/pdrelay.sock ] && break; sleep 0.1; done
[ -S demo/state/run/pdrelay.sock ] || { echo "daemon did not start:"; cat demo/state/daemon.log; exit 1; }

echo "\$ pdrelay send -t trigger -d 'Disk /var is 97% full on web1' -f mount=/var"
"$bin" send -t trigger -d 'Disk /var is 97% full on web1' -f mount=/var

echo "\$ drop a file into demo/state/spool/"
printf '%s\n' '{"event_action":"trigger","dedup_key":"web1/load","payload":{"summary":"Load 14 on web1","source":"web1","severity":"warning"}}' > demo/state/spool/.load.json.tmp
mv demo/state/spool/.load.json.tmp demo/state/spool/load.json

for _ in $(seq 100); do [ "$(wc -l < demo/state/received.log)" -ge 2 ] && break; sleep 0.1; done
echo
echo "The receiver got (receive time, endpoint, body):"
cat demo/state/received.log
[ "$(wc -l < demo/state/received.log)" -ge 2 ] || { echo "missing events; daemon log:"; cat demo/state/daemon.log; exit 1; }
if [ "${KEEP:-}" = 1 ]; then
  echo
  echo "Daemon (pid $daemon) and receiver (pid $receiver) keep running; PDRELAY_CONFIG=demo/config.toml."
  echo "Try: PDRELAY_CONFIG=demo/config.toml $bin send -t resolve -i web1/load ; tail -f demo/state/received.log"
  echo "Stop them: kill $daemon $receiver"
fi
