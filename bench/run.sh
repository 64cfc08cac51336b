#!/usr/bin/env bash
# pdrelay benchmarks: one command, figures printed as a table (and bench/results.json).
#   bench/run.sh          full run (1,000,000 pending; about 7 minutes on 2 cores)
#   QUICK=1 bench/run.sh  smaller counts (about 3 minutes; the idle minute is always a minute)
#   ONLY="pending drain" bench/run.sh   some parts: idle (with latency and send), intake, pending,
#                                       spool, drain, bigfile, recovery
# Everything runs on this machine: the daemon (release build), the receiver (the tests' fake
# Events API, release build) on 127.0.0.1, and Python clients.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin pdrelay --example receiver
T="${CARGO_TARGET_DIR:-target}/release"
B="${PDRELAY_BIN:-$T/pdrelay}" # PDRELAY_BIN: measure another build (an older one, for a before)
W=$(mktemp -d /tmp/pdrelay-bench.XXXXXX)
PORT=${PORT:-18799}
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
if [ -n "${QUICK:-}" ]; then INTAKE=50000; PENDING=200000; DRAIN=20000; SENDS=50; else INTAKE=200000; PENDING=1000000; DRAIN=100000; SENDS=200; fi
RESULTS="$W/results"

config() { # $1 = name, $2 = max_pending, $3 = delivery.rate_limit (default 0: none)
  mkdir -p "$W/$1/spool"
  cat > "$W/$1/config.toml" <<CONF
state_dir = "$W/$1/state"
log_level = "warn"
[delivery]
rate_limit = ${3:-0}
[queue]
max_pending = $2
min_free_bytes = 0
[ingest]
socket = "$W/$1/run/pdrelay.sock"
admin_socket = "$W/$1/run/admin.sock"
spool_dirs = ["$W/$1/spool"]
[pagerduty]
events_url = "http://127.0.0.1:$PORT"
concurrency = 64
CONF
}
receiver() { # args: extra receiver args
  "$T/examples/receiver" "127.0.0.1:$PORT" "$@" > "$W/received.log" 2>/dev/null & PIDS+=($!); RECV=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
}
daemon() { # $1 = name
  "$B" daemon --config "$W/$1/config.toml" 2> "$W/$1/daemon.log" & PIDS+=($!); DPID=$!
  for _ in $(seq 200); do [ -S "$W/$1/run/pdrelay.sock" ] && break; sleep 0.05; done
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
kb() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
say() { echo "$1" | tee -a "$RESULTS"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"

# 1. Idle: resident memory, and wake-ups (context switches of every thread, from
#    /proc/PID/task/*/status) over a minute with an empty queue, total and by thread.
if want idle; then
config idle 1000000; receiver; daemon idle; sleep 2
say "idle_rss_kb $(kb $DPID VmRSS)"
python3 bench/wakeups.py $DPID "${IDLE_SECONDS:-60}" > "$W/wakeups.json"
say "idle_wakeups_per_s $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total_per_second"])' "$W/wakeups.json")"
say "idle_wakeups_by_thread $(cat "$W/wakeups.json")"

# 2. Latency with an idle queue: socket line and spool file to the receiver.
say "latency_socket $(python3 bench/latency.py socket "$W/idle/run/pdrelay.sock" "$W/received.log" 200)"
say "latency_spool $(python3 bench/latency.py spool "$W/idle/spool" "$W/received.log" 200)"

# 3. pdrelay send as a process per event (a Nagios notification command), daemon listening.
start=$(date +%s.%N)
for i in $(seq $SENDS); do "$B" send --config "$W/idle/config.toml" -q -k R0000000000000000000000000000007 -t trigger -d "send $i"; done
end=$(date +%s.%N)
say "send_ms_per_event $(awk -v a=$start -v b=$end -v n=$SENDS 'BEGIN {printf "%.2f", (b-a)*1000/n}')"
stop $DPID; stop $RECV
fi

# 4. Durable socket intake: pipelined on 4 connections, each "ok" after its group commit.
#    The receiver throttles (429, Retry-After 1 h) so deliveries pause and do not compete.
if want intake || want pending; then receiver throttle 3600; fi
if want intake; then
config intake 10000000; daemon intake
say "socket_intake $(python3 bench/client.py "$W/intake/run/pdrelay.sock" $INTAKE 4 100)"
stop $DPID
fi

# 5. A large backlog with PagerDuty away: peak memory, disk per event, refusal past the limit.
if want pending; then
config pending $PENDING; daemon pending
say "pending_intake $(python3 bench/client.py "$W/pending/run/pdrelay.sock" $PENDING 4 100)"
sleep 2 # steady state: the burst is over and freed memory handed back
say "pending_rss_kb $(kb $DPID VmRSS)"
say "pending_peak_rss_kb $(kb $DPID VmHWM)"
say "pending_disk_bytes_per_event $(( $(du -sb "$W/pending/state" | cut -f1) / PENDING ))"
say "past_limit $(python3 bench/client.py "$W/pending/run/pdrelay.sock" 4 1 100 | python3 -c 'import json,sys; print(json.load(sys.stdin)["first_error"])')"
stop $DPID; rm -rf "$W/pending"
fi
if want intake || want pending; then stop $RECV; rm -rf "$W/intake"; fi

# 6. Spool intake: files dropped by a producer (rename into place), 429-paused receiver.
if want spool; then
config spool 10000000; receiver throttle 3600; daemon spool
python3 - "$W/spool/spool" "$((INTAKE / 10))" > "$W/spool.json" <<'PY'
import json, os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
for i in range(n):
    tmp = os.path.join(d, ".f%d.tmp" % i)
    with open(tmp, "w") as f:
        f.write(json.dumps({"routing_key": "R%031d" % (i % 100), "event_action": "trigger",
                            "payload": {"summary": "file %d" % i, "source": "b", "severity": "info"}}))
    os.rename(tmp, os.path.join(d, "f%d.json" % i))
while any(not x.startswith(".") and x.endswith(".json") for x in os.listdir(d)):
    time.sleep(0.01)
took = time.monotonic() - start
print(json.dumps({"files": n, "seconds": round(took, 3), "per_second": round(n / took)}))
PY
say "spool_intake $(cat "$W/spool.json")"
stop $DPID; stop $RECV
fi

# 7. Drain: a backlog over 100 routing keys, held by 429s for 15 s, then delivered to the receiver.
if want drain; then
config drain 10000000; receiver throttle 15; daemon drain
python3 bench/client.py "$W/drain/run/pdrelay.sock" $DRAIN 4 100 > /dev/null
for _ in $(seq 600); do [ "$(grep -c enqueue "$W/received.log")" -ge $DRAIN ] && break; sleep 0.5; done
say "drain $(python3 - "$W/received.log" <<'PY'
import json, sys
t = [float(l.split(" ", 1)[0]) for l in open(sys.argv[1]) if " /v2/" in l]
print(json.dumps({"events": len(t), "seconds": round(t[-1] - t[0], 3), "per_second": round(len(t) / (t[-1] - t[0]))}))
PY
)"
# Idle again after the burst: threads added under load (sled's pool grows past its 7) must end.
python3 bench/wakeups.py $DPID 30 > "$W/wakeups.json"
say "drained_wakeups_per_s $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total_per_second"])' "$W/wakeups.json")"
say "drained_wakeups_by_thread $(cat "$W/wakeups.json")"
stop $DPID; stop $RECV
fi
# 8. One big spool file (issue 13): a 16 MB .ndjson of small events, streamed in bounded
#    commits, while a socket client sends one event every 100 ms; peak memory and slowest reply.
if want bigfile; then
config bigfile 10000000; receiver throttle 3600; daemon bigfile
say "bigfile $(python3 bench/bigfile.py $DPID "$W/bigfile/spool" "$W/bigfile/run/pdrelay.sock" 16)"
stop $DPID; stop $RECV
fi
# 9. Recovery: PagerDuty away (503) while 10,000 events over 100 keys queue up, then back. Time
#    from its first answer ("UP") to the first event and to the last, with the rate limit high
#    (1,000,000 a minute) and at PagerDuty's default (120 a minute per key, enforced by the
#    receiver too: a 429 would pause the key and show in the time), probe_interval at its
#    default (5 s). Then a storm on one key at the default limit: 300 events (QUICK: skipped)
#    drain in three bursts of up to 120 a minute apart; the measured period between bursts and
#    the last burst's length give 10,000 events' time: (ceil(10000/120) - 1) * period + burst.
if want recovery; then
recovery() { # $1 = name, $2 = rate limit, $3 = events, $4 = keys, $5 = down seconds
  config "$1" 1000000 "$2"; receiver down "$5" limit 120; daemon "$1"
  python3 bench/client.py "$W/$1/run/pdrelay.sock" "$3" 4 "$4" > /dev/null
  for _ in $(seq 2400); do [ "$(grep -c ' /v2/enqueue ' "$W/received.log")" -ge "$3" ] && break; sleep 0.5; done
  python3 - "$W/received.log" "$3" <<'PY'
import json, sys
up, t = None, []
for line in open(sys.argv[1]):
    f = line.split(" ", 2)
    if f[1].strip() == "UP": up = float(f[0])
    elif f[1] == "/v2/enqueue": t.append(float(f[0]))
print(json.dumps({"events": len(t), "first_after_up_s": round(t[0] - up, 3), "drained_after_up_s": round(t[-1] - up, 3)}))
PY
  stop $DPID; stop $RECV; rm -rf "$W/$1"
}
say "recovery_rate_high $(recovery rec_high 1000000 10000 100 20)"
say "recovery_rate_default $(recovery rec_default 120 10000 100 20)"
if [ -z "${QUICK:-}" ]; then
config storm 1000000 120; receiver limit 120; daemon storm
python3 bench/client.py "$W/storm/run/pdrelay.sock" 300 1 1 > /dev/null
for _ in $(seq 600); do [ "$(grep -c ' /v2/enqueue ' "$W/received.log")" -ge 300 ] && break; sleep 0.5; done
say "storm_one_key_default $(python3 - "$W/received.log" <<'PY'
import json, math, sys
t = [float(l.split(" ", 1)[0]) for l in open(sys.argv[1]) if " /v2/enqueue " in l]
period = (t[240] - t[0]) / 2          # start of burst 3 minus start of burst 1, over 2
burst = t[-1] - t[240]                # the last burst's own length
print(json.dumps({"events": len(t), "seconds": round(t[-1] - t[0], 3), "burst_period_s": round(period, 3),
                  "extrapolated_10000_s": round((math.ceil(10000 / 120) - 1) * period + burst)}))
PY
)"
stop $DPID; stop $RECV; rm -rf "$W/storm"
fi
fi
cp "$RESULTS" bench/results.txt 2>/dev/null || true
echo "results in bench/results.txt"
