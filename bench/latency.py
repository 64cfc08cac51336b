#!/usr/bin/env python3
"""Latency from a socket line (or a spool file rename) to the receiver printing it, with an idle
queue: sends N events one at a time, 20 ms apart, each carrying its send time; then reads the
receiver's log (lines "<recv unix s> <path> <json>") and prints p50/p99 in ms as JSON."""
import json, os, socket, sys, time

def main(mode, path, log, n):
    tag = "lat-%s-%d" % (mode, os.getpid())
    if mode == "socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        f = s.makefile("rb")
    for i in range(n):
        ev = {"routing_key": "R%031d" % 7, "event_action": "trigger", "dedup_key": "%s-%d" % (tag, i),
              "payload": {"summary": "latency", "source": "bench", "severity": "info",
                          "custom_details": {"t0": time.time()}}}
        if mode == "socket":
            s.sendall((json.dumps(ev) + "\n").encode())
            f.readline()
        else:
            tmp = os.path.join(path, ".%s-%d.tmp" % (tag, i))
            with open(tmp, "w") as out:
                out.write(json.dumps(ev))
            os.rename(tmp, os.path.join(path, "%s-%d.json" % (tag, i)))
        time.sleep(0.02)
    deadline = time.time() + 30
    lat = {}
    while time.time() < deadline and len(lat) < n:
        time.sleep(0.2)
        with open(log) as fh:
            for line in fh:
                parts = line.split(" ", 2)
                if len(parts) == 3 and tag in parts[2]:
                    body = json.loads(parts[2])
                    lat[body["dedup_key"]] = (float(parts[0]) - body["payload"]["custom_details"]["t0"]) * 1000
    v = sorted(lat.values())
    pct = lambda p: round(v[min(len(v) - 1, int(len(v) * p))], 2) if v else None
    print(json.dumps({"mode": mode, "events": n, "received": len(v), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
