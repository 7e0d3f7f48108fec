#!/usr/bin/env python3
"""Who used the proxy's core, second by second, while latency.sh measured a round.

    core_sampler.py --cpu 0 --out FILE PID...   # samples until SIGINT/SIGTERM, then writes FILE

Every 100 ms it reads the core's busy time (/proc/stat) and each thread's time on a CPU
(/proc/PID/task/TID/schedstat, nanoseconds) of the given processes, which latency.sh pins to
that core. Per second it writes: the processes' CPU %, the busiest of their threads other
than the busiest one (the worker) with its CPU %, and "others": the core's busy time that
none of the processes used (other programs, and kernel work charged to no one), in %.
A second whose p99 jumps can then be told apart: the proxy's own helper threads, something
else on its core, or neither (the proxy itself).
"""
import argparse
import json
import os
import signal
import sys
import time

TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def core_busy_ns(cpu):
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal
                return (sum(v[:8]) - v[3] - v[4]) * TICK_NS
    raise SystemExit(f"core_sampler: no cpu{cpu} in /proc/stat")


def threads_ns(pids):
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    run = int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
            except (OSError, ValueError, IndexError):
                continue
            out[(pid, tid)] = (name, run)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("pids", nargs="+", type=int)
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    start = time.monotonic()
    seconds = []
    base_t, base_core, base_thr = start, core_busy_ns(args.cpu), threads_ns(args.pids)
    while not stop:
        time.sleep(args.interval)
        now = time.monotonic()
        if now - base_t < 1.0 and not stop:
            continue
        core, thr = core_busy_ns(args.cpu), threads_ns(args.pids)
        wall = (now - base_t) * 1e9
        used = {k: (v[0], v[1] - base_thr.get(k, (v[0], 0))[1]) for k, v in thr.items()}
        total = sum(ns for _, ns in used.values())
        ranked = sorted(used.values(), key=lambda x: -x[1])
        helper = ranked[1] if len(ranked) > 1 else ("-", 0)
        seconds.append({
            "second": len(seconds) + 1,
            "proxy_pct": round(total / wall * 100, 1),
            "helper": helper[0],
            "helper_pct": round(helper[1] / wall * 100, 1),
            "others_pct": round(max(0.0, (core - base_core) - total) / wall * 100, 1),
        })
        base_t, base_core, base_thr = now, core, thr
    with open(args.out, "w") as f:
        json.dump({"cpu": args.cpu, "per_second": seconds}, f)


if __name__ == "__main__":
    sys.exit(main())
