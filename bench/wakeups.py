#!/usr/bin/env python3
"""Wake-ups per second of every thread of a process, over a window.

usage: wakeups.py PID SECONDS

A wake-up is a context switch of a thread: voluntary (it blocked, then was woken) plus
nonvoluntary (it was preempted), from /proc/PID/task/TID/status, read at the start and at the end
of the window. A thread started during the window counts from zero; a thread that ended during it
counts what it had at the start (its last switches are lost, which only happens if threads come
and go while idle, and then the report names them under "threads_started"/"threads_ended").
Prints one JSON object: the total per second, and per second by thread name (threads sharing a
name are summed and counted).
"""
import json
import os
import sys
import time


def snapshot(pid):
    tasks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue  # the thread ended while we read
        switches = int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])
        tasks[tid] = (fields["Name"], switches)
    return tasks


def main():
    pid, seconds = sys.argv[1], float(sys.argv[2])
    before = snapshot(pid)
    start = time.monotonic()
    time.sleep(seconds)
    after = snapshot(pid)
    took = time.monotonic() - start
    by_name = {}
    for tid, (name, count) in after.items():
        delta = count - before.get(tid, (name, 0))[1]
        total, threads = by_name.get(name, (0, 0))
        by_name[name] = (total + delta, threads + 1)
    result = {
        "seconds": round(took, 1),
        "total_per_second": round(sum(d for d, _ in by_name.values()) / took, 2),
        "by_thread": {
            (name if n == 1 else f"{name} x{n}"): round(d / took, 2)
            for name, (d, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])
        },
        "threads_started": sorted(after[t][0] for t in after.keys() - before.keys()),
        "threads_ended": sorted(before[t][0] for t in before.keys() - after.keys()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
