#!/usr/bin/env python3
"""The soak's report (benches/soak/soak.sh runs it): joins the per-window process figures
(samples.tsv), the generator's per-window latency and answers (open_loop --json --window) and
the operations (events.tsv) into soak.csv, checks the targets, and writes report.md (printed
too) and soak.png (RSS and p99 over time). Exit status 0 when every target is met, 1 when one
is missed, 2 when one could not be judged (a run too short for its warm-up)."""

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import Counter

EXPECTED_SHOWN = ("401", "403", "429")


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def fmt(v, digits=1):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--sample-seconds", type=float, required=True)
    ap.add_argument("--warm-minutes", type=float, required=True)
    ap.add_argument("--rss-growth-pct", type=float, required=True)
    ap.add_argument("--fd-slack", type=int, required=True)
    ap.add_argument("--thread-slack", type=int, required=True)
    ap.add_argument("--ops-failed", type=int, required=True)
    ap.add_argument("--generator-exit", type=int, required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("--setting", action="append", default=[])
    ap.add_argument("--short", type=int, default=0)
    ap.add_argument("--warnings", action="append", default=[],
                    help="a gateway process's WARN/ERROR lines (one file per process)")
    a = ap.parse_args()

    samples = read_tsv(a.samples)
    events = read_tsv(a.events)
    gen = json.load(open(a.generator))
    windows = gen.get("windows", [])
    period = a.sample_seconds
    warm_s = a.warm_minutes * 60

    # --- one row per sample: the process at the window's end, the window's requests -----------
    rows = []
    for s in samples:
        k = int(s["sample"])
        w = windows[k - 1] if k - 1 < len(windows) else {}
        statuses = {}
        for c in w.get("classes", []):
            for st, n in c["statuses"].items():
                statuses[st] = statuses.get(st, 0) + n
        lat = w.get("latency_ms") or {}
        evs = [e for e in events if (k - 1) * period < number(e["t_s"]) <= k * period
               and e["event"] not in ("start", "end")]
        rows.append({
            "minute": round(k * period / 60, 3),
            "t_s": number(s["t_s"]),
            "pid": s["pid"],
            "gateways": s["gateways"],
            "rss_mib": number(s["rss_kib"]) / 1024,
            "fds": number(s["fds"]),
            "threads": number(s["threads"]),
            "gateway_cpu_pct": number(s["gateway_cpu_pct"]),
            "background_cpu_pct": number(s["background_cpu_pct"]),
            "answered": w.get("completed", 0),
            "p50_ms": number(lat.get("p50")),
            "p99_ms": number(lat.get("p99")),
            "max_ms": number(lat.get("max")),
            "unexpected": w.get("unexpected", 0),
            "errors": w.get("errors", 0),
            "stale_retries": w.get("stale_retries", 0),
            "s200": statuses.get("200", 0),
            **{"s" + st: statuses.get(st, 0) for st in EXPECTED_SHOWN},
            "other_statuses": " ".join(f"{st}:{n}" for st, n in sorted(statuses.items())
                                       if st not in ("200",) + EXPECTED_SHOWN),
            "events": "; ".join(f"{e['event']} ({e['detail']})" if e["event"].endswith("FAILED")
                                else e["event"] for e in evs),
        })
    with open(os.path.join(a.out, "soak.csv"), "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["minute"])
        out.writeheader()
        for r in rows:
            out.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})

    # --- the targets ------------------------------------------------------------------------------
    checks = []  # (target, verdict PASS/FAIL/N/A, detail)

    # Each process from its start (the run's, or the upgrade that started it) plus the warm-up.
    upgrades = [number(e["t_s"]) for e in events if e["event"] == "upgrade"]
    segments = []
    for r in rows:
        if not segments or segments[-1]["pid"] != r["pid"]:
            born = 0.0 if not segments else (upgrades[len(segments) - 1]
                                              if len(segments) - 1 < len(upgrades) else r["t_s"])
            segments.append({"pid": r["pid"], "born": born, "rows": []})
        segments[-1]["rows"].append(r)
    judged = []
    for seg in segments:
        warm = [r for r in seg["rows"] if r["t_s"] >= seg["born"] + warm_s - 1]
        if len(warm) >= 2:
            judged.append((seg, warm[0], warm[-1]))
        else:
            checks.append((f"growth of pid {seg['pid']}", "N/A",
                           f"fewer than 2 samples after its {a.warm_minutes:g} min warm-up"))
    for seg, first, last in judged:
        growth = (last["rss_mib"] - first["rss_mib"]) / first["rss_mib"] * 100
        span = f"minute {first['minute']:g} → {last['minute']:g}"
        checks.append((f"RSS growth < {a.rss_growth_pct:g} %, pid {seg['pid']}",
                       "PASS" if growth < a.rss_growth_pct else "FAIL",
                       f"{fmt(first['rss_mib'])} → {fmt(last['rss_mib'])} MiB ({growth:+.1f} %), {span}"))
        dfd = last["fds"] - first["fds"]
        checks.append((f"no fd growth, pid {seg['pid']}", "PASS" if dfd <= a.fd_slack else "FAIL",
                       f"{first['fds']:.0f} → {last['fds']:.0f} ({dfd:+.0f}; slack {a.fd_slack}), {span}"))
        dth = last["threads"] - first["threads"]
        checks.append((f"no thread growth, pid {seg['pid']}", "PASS" if dth <= a.thread_slack else "FAIL",
                       f"{first['threads']:.0f} → {last['threads']:.0f} ({dth:+.0f}; slack {a.thread_slack}), {span}"))
    # The reading, across the upgrade: the first sample after the warm-up to the last.
    after = [r for r in rows if r["t_s"] >= warm_s - 1]
    if len(after) >= 2:
        growth = (after[-1]["rss_mib"] - after[0]["rss_mib"]) / after[0]["rss_mib"] * 100
        checks.append((f"RSS growth < {a.rss_growth_pct:g} %, minute {after[0]['minute']:g} → end (serving process)",
                       "PASS" if growth < a.rss_growth_pct else "FAIL",
                       f"{fmt(after[0]['rss_mib'])} → {fmt(after[-1]['rss_mib'])} MiB ({growth:+.1f} %)"))

    kinds = gen.get("error_kinds", {})
    failed = gen.get("unexpected", 0) + gen.get("errors", 0)
    checks.append(("no failed request but the intended 401/403/429", "PASS" if failed == 0 else "FAIL",
                   f"{gen.get('completed', 0)} answered; {gen.get('unexpected', 0)} unexpected statuses, "
                   f"{gen.get('errors', 0)} errors ({', '.join(f'{k} {v}' for k, v in kinds.items() if v) or 'none'}); "
                   f"{gen.get('stale_retries', 0)} requests resent once after a stale keep-alive connection"))
    missing = []
    for c in gen.get("classes", []):
        wanted = c["expect"].split("/") if c["expect"] != "2xx" else []
        if c["completed"] == 0:
            missing.append(f"{c['name']}: no answer")
        for st in wanted:
            if c["statuses"].get(st, 0) == 0:
                missing.append(f"{c['name']}: no {st}")
    checks.append(("every class got its intended answers (200, 401, 403, and 429 for the limited client)",
                   "PASS" if not missing else "FAIL",
                   "; ".join(missing) or ", ".join(
                       f"{c['name']} " + "/".join(f"{st}×{n}" for st, n in sorted(c["statuses"].items()))
                       for c in gen.get("classes", []))))
    counts = {}
    for e in events:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    checks.append(("reloads, flaps and the upgrade all done", "PASS" if a.ops_failed == 0 else "FAIL",
                   f"{counts.get('reload', 0)} reloads, {counts.get('upstream down', 0)} upstream stops and "
                   f"{counts.get('upstream up', 0)} restarts, {counts.get('upgrade', 0)} upgrade(s) "
                   f"({counts.get('drained', 0)} old process(es) drained and exited 0); {a.ops_failed} failed"))
    checks.append(("the generator kept the rate", "PASS" if a.generator_exit == 0 else "FAIL",
                   f"{gen.get('achieved_rate')} req/s of {gen.get('rate')} (exit {a.generator_exit}), "
                   f"generator CPU {gen.get('generator_cpu_pct')} %, most queued {gen.get('max_queue')}"))

    # --- the plot ---------------------------------------------------------------------------------
    plotted = False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
        for seg in segments:
            xs = [r["minute"] for r in seg["rows"]]
            ax1.plot(xs, [r["rss_mib"] for r in seg["rows"]], marker="o", label=f"pid {seg['pid']}")
        ax1.set_ylabel("RSS of the serving process (MiB)")
        ax1.set_ylim(bottom=0)
        ax1.legend(loc="lower right")
        # A window's latency holds over the whole window: steps ending at each row's minute.
        edges = [0.0] + [r["minute"] for r in rows]
        for key, style, label in (("p99_ms", "-", "p99"), ("p50_ms", ":", "p50")):
            ys = [r[key] for r in rows]
            ax2.plot(edges, ys[:1] + ys, drawstyle="steps-pre", linestyle=style, label=label)
        ax2.set_ylabel("latency per window (ms)")
        ax2.set_xlabel("minutes")
        # Headroom above the highest p99 for the legend.
        finite = [r["p99_ms"] for r in rows if not math.isnan(r["p99_ms"])]
        ax2.set_ylim(0, max(finite) * 1.3 if finite and max(finite) > 0 else 1)
        downs = [number(e["t_s"]) / 60 for e in events if e["event"] == "upstream down"]
        ups = [number(e["t_s"]) / 60 for e in events if e["event"] == "upstream up"]
        for i, d in enumerate(downs):
            u = ups[i] if i < len(ups) else d
            for ax in (ax1, ax2):
                ax.axvspan(d, u, color="grey", alpha=0.25, label="upstream 3 down" if i == 0 and ax is ax2 else None)
        for i, e in enumerate(e for e in events if e["event"] == "reload"):
            ax2.axvline(number(e["t_s"]) / 60, color="green", alpha=0.3, linewidth=0.8,
                        label="reload" if i == 0 else None)
        for i, t in enumerate(upgrades):
            for ax in (ax1, ax2):
                ax.axvline(t / 60, color="red", linestyle="--", label="upgrade" if i == 0 and ax is ax2 else None)
        ax2.legend(loc="upper left", fontsize="small", ncols=5)
        fig.suptitle(a.title)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "soak.png"), dpi=100)
        plotted = True
    except Exception as e:  # the plot fails no target
        print(f"report.py: no plot: {e}", file=sys.stderr)

    # --- report.md --------------------------------------------------------------------------------
    lines = [f"## {a.title}", ""]
    if a.short:
        lines += ["**Short validation run** (shortened and/or scaled-down periods, on a shared machine): "
                  "it shows the soak works, not how portico holds up over 30 minutes.", ""]
    lines += [f"- {s}" for s in a.setting] + [""]
    lines += ["| min | pid | RSS MiB | fds | threads | gateway CPU % | other CPU % | answered | p50 ms | p99 ms | max ms "
              "| unexpected | errors | stale resends | 401 | 403 | 429 | events |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['minute']:g} | {r['pid']} | {fmt(r['rss_mib'])} | {r['fds']:.0f} | {r['threads']:.0f} "
                     f"| {fmt(r['gateway_cpu_pct'], 0)} | {fmt(r['background_cpu_pct'], 0)} | {r['answered']} "
                     f"| {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | {fmt(r['max_ms'], 3)} | {r['unexpected']} "
                     f"| {r['errors']} | {r['stale_retries']} | {r['s401']} | {r['s403']} | {r['s429']} "
                     f"| {r['events']} |")
    lines += ["", "| target | verdict | measured |", "|---|---|---|"]
    lines += [f"| {t} | **{v}** | {d} |" for t, v, d in checks]
    # What the gateways logged at WARN and ERROR, most frequent first (numbers folded).
    notes = []
    for path in a.warnings:
        counts = Counter(re.sub(r"[0-9]+", "N", re.sub(r"^\[\S+ ", "", line.rstrip()))[:160]
                         for line in open(path, errors="replace"))
        top = "; ".join(f"{n}× `{m}`" for m, n in counts.most_common(4))
        notes.append(f"- {os.path.basename(path)}: {sum(counts.values())} WARN/ERROR lines" + (f": {top}" if top else ""))
    if notes:
        lines += ["", "Gateway logs (one file per process, in start order):", ""] + notes
    if plotted:
        lines += ["", "![RSS and p99 over the soak](soak.png)"]
    lines.append("")
    text = "\n".join(lines)
    open(os.path.join(a.out, "report.md"), "w").write(text)
    print(text)
    verdicts = [v for _, v, _ in checks]
    overall = "FAIL" if "FAIL" in verdicts else ("INCOMPLETE" if "N/A" in verdicts else "PASS")
    print(f"soak: {overall} ({verdicts.count('PASS')} passed, {verdicts.count('FAIL')} failed, "
          f"{verdicts.count('N/A')} not judged)", file=sys.stderr)
    return {"PASS": 0, "FAIL": 1, "INCOMPLETE": 2}[overall]


if __name__ == "__main__":
    sys.exit(main())
