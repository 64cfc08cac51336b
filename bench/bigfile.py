#!/usr/bin/env python3
"""One big spool file: drops a .ndjson of small events (16 MB by default) into the spool while a
socket client sends one event every 100 ms, and reports the daemon's peak resident memory, the
slowest socket reply and how long the file took to store. Prints one JSON line.
Usage: bigfile.py DAEMON_PID SPOOL_DIR SOCKET [MEGABYTES]"""
import json, os, socket, sys, threading, time

pid, spool, sock_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
megabytes = int(sys.argv[4]) if len(sys.argv) > 4 else 16

def status(key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0

lines, size, n = [], 0, 0
while size < megabytes * 1000 * 1000:
    line = json.dumps({"routing_key": "R%031d" % (n % 100), "event_action": "trigger",
                       "dedup_key": "big-%d" % n, "payload": {"summary": "e%d" % n, "source": "b",
                                                              "severity": "info"}}) + "\n"
    lines.append(line)
    size += len(line)
    n += 1
tmp = os.path.join(spool, ".big.tmp")
with open(tmp, "w") as f:
    f.write("".join(lines))
del lines

done = threading.Event()
slowest = [0.0]
replies = [0]
def client():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    f = s.makefile("rb")
    i = 0
    while not done.is_set():
        line = json.dumps({"routing_key": "R%031d" % 7, "event_action": "trigger", "dedup_key": "probe-%d" % i,
                           "payload": {"summary": "probe", "source": "b", "severity": "info"}}) + "\n"
        t0 = time.monotonic()
        s.sendall(line.encode())
        f.readline()
        slowest[0] = max(slowest[0], time.monotonic() - t0)
        replies[0] += 1
        i += 1
        time.sleep(0.1)
    s.close()

rss0 = status("VmRSS")
t = threading.Thread(target=client)
t.start()
start = time.monotonic()
os.rename(tmp, os.path.join(spool, "big.ndjson"))
peak = rss0
claim = os.path.join(spool, ".claim")
while True:
    peak = max(peak, status("VmRSS"))
    if not os.path.exists(os.path.join(spool, "big.ndjson")) and \
            (not os.path.isdir(claim) or not os.listdir(claim)):
        break
    if time.monotonic() - start > 600:
        break
    time.sleep(0.05)
took = time.monotonic() - start
done.set()
t.join()
print(json.dumps({"file_mb": megabytes, "events": n, "seconds": round(took, 2),
                  "rss_before_kb": rss0, "peak_rss_kb": max(peak, status("VmHWM")),
                  "socket_replies": replies[0], "slowest_socket_reply_ms": round(slowest[0] * 1000)}))
