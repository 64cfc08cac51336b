#!/usr/bin/env python3
"""Benchmark client for pdrelay's socket: pipelines N events over C connections and counts the
"ok" replies (each one means the event's group commit is on disk). Prints one JSON line."""
import json, socket, sys, threading, time

def run(path, total, conns, routing_keys, summary_len):
    per = total // conns
    oks = [0] * conns
    errors = [None] * conns
    # Every request line is built before the clock starts: the figure is the daemon's rate, not
    # Python's JSON encoding.
    chunks = []
    for i in range(conns):
        lines = [json.dumps({
            "routing_key": "R%031d" % (n % routing_keys),
            "event_action": "trigger",
            "dedup_key": "bench-%d" % n,
            "payload": {"summary": ("event %d " % n).ljust(summary_len, "x"), "source": "bench", "severity": "info"},
        }) for n in range(i * per, (i + 1) * per)]
        chunks.append([("\n".join(lines[k:k + 1000]) + "\n").encode() for k in range(0, per, 1000)])
    def worker(i):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        def writer():
            for chunk in chunks[i]:
                s.sendall(chunk)
        t = threading.Thread(target=writer)
        t.start()
        f = s.makefile("rb")
        for _ in range(per):
            line = f.readline()
            if not line:
                errors[i] = "connection closed"
                break
            if b'"ok":true' in line:
                oks[i] += 1
            elif errors[i] is None:
                errors[i] = line.decode().strip()
        t.join()
        s.close()
    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    for t in threads: t.start()
    for t in threads: t.join()
    took = time.monotonic() - start
    print(json.dumps({"events": per * conns, "ok": sum(oks), "seconds": round(took, 3),
                      "per_second": round(sum(oks) / took), "first_error": next((e for e in errors if e), None)}))

if __name__ == "__main__":
    path, total, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    keys = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    summary_len = int(sys.argv[5]) if len(sys.argv) > 5 else 40
    run(path, total, conns, keys, summary_len)
