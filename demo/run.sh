#!/usr/bin/env bash
# Builds pdrelay, starts a local receiver that prints what it gets and a daemon with
# demo/config.toml, then sends one event with `pdrelay send` and one as a spool drop-file, and
# shows them arriving. Nothing leaves this machine. KEEP=1 leaves both running for you to play.
# The receiver listens on a free port (RECEIVER_ADDR overrides: 127.0.0.1:0 by default).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin pdrelay --example receiver
target="${CARGO_TARGET_DIR:-target}"
bin="$target/debug/pdrelay"
if [ -S demo/state/run/admin.sock ] && "$bin" queue status --config demo/state/config.toml >/dev/null 2>&1; then
  echo "a demo daemon is still running (KEEP=1?); stop it first: kill $(cat demo/state/pids 2>/dev/null)" >&2
  exit 1
fi
rm -rf demo/state && mkdir -p demo/state/spool

# The receiver takes a free port (127.0.0.1:0) and says which; a receiver that cannot start is
# reported here, not found out later as missing events.
"$target/debug/examples/receiver" "${RECEIVER_ADDR:-127.0.0.1:0}" > demo/state/received.log 2> demo/state/receiver.err &
receiver=$!
url=""
for _ in $(seq 300); do
  url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' demo/state/receiver.err)
  [ -n "$url" ] && break
  kill -0 "$receiver" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "the demo receiver did not start:" >&2
  cat demo/state/receiver.err >&2
  kill "$receiver" 2>/dev/null || true
  exit 1
fi
# demo/config.toml with the receiver's address.
sed "s|^events_url = .*|events_url = \"$url\"|" demo/config.toml > demo/state/config.toml
export PDRELAY_CONFIG=demo/state/config.toml

"$bin" daemon 2> demo/state/daemon.log &
daemon=$!
echo "$daemon $receiver" > demo/state/pids
cleanup() { kill "$daemon" "$receiver" 2>/dev/null || true; wait 2>/dev/null || true; }
[ "${KEEP:-}" = 1 ] || trap cleanup EXIT

for _ in $(seq 100); do [ -S demo/state/run/pdrelay.sock ] && break; kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
[ -S demo/state/run/pdrelay.sock ] || { echo "daemon did not start:"; cat demo/state/daemon.log; exit 1; }

echo "\$ pdrelay send -t trigger -d 'Disk /var is 97% full on web1' -f mount=/var"
"$bin" send -t trigger -d 'Disk /var is 97% full on web1' -f mount=/var

echo "\$ drop a file into demo/state/spool/"
printf '%s\n' '{"event_action":"trigger","dedup_key":"web1/load","payload":{"summary":"Load 14 on web1","source":"web1","severity":"warning"}}' > demo/state/spool/.load.json.tmp
mv demo/state/spool/.load.json.tmp demo/state/spool/load.json

for _ in $(seq 100); do [ "$(wc -l < demo/state/received.log)" -ge 2 ] && break; sleep 0.1; done
echo
echo "The receiver at $url got (receive time, endpoint, body):"
cat demo/state/received.log
[ "$(wc -l < demo/state/received.log)" -ge 2 ] || { echo "missing events; daemon log:"; cat demo/state/daemon.log; exit 1; }
if [ "${KEEP:-}" = 1 ]; then
  echo
  echo "Daemon (pid $daemon) and receiver (pid $receiver) keep running; PDRELAY_CONFIG=demo/state/config.toml."
  echo "Try: PDRELAY_CONFIG=demo/state/config.toml $bin send -t resolve -i web1/load ; tail -f demo/state/received.log"
  echo "Stop them: kill $daemon $receiver"
fi
