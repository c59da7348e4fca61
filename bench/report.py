#!/usr/bin/env python3
"""Turns the records of one bench/run (JSON lines) into BENCHMARKS.md and SVG plots.

    report.py RESULTS.jsonl --out DIR [--meta KEY=VALUE]... [--notes FILE]

Every record is one measurement printed by bench/c/*.c, bench/node/*.cjs or
bench/run itself (see bench/c/bench_common.h for the format); a record with
"skipped" says why a case did not run. Statistics use the nearest-rank
percentile over the recorded samples; ratios only compare records of the same
results file, i.e. of the same run. Goals are reported, never asserted.

Standard library only, so the harness needs nothing beyond python3.
"""

import argparse
import datetime
import html
import json
import math
import os
import platform
import re
import sys

MIB = 1024 * 1024


# ----------------------------------------------------------------- inputs

def load_records(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"report.py: {path}:{n}: not a JSON record ({e}); "
                         "a bench program printed something unexpected on stdout")
    return records


def machine_facts():
    facts = {"cores": os.cpu_count() or 0, "kernel": platform.release()}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    facts["memory_gib"] = int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return facts


# ------------------------------------------------------------- statistics

def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Stats:
    def __init__(self, rec):
        s = sorted(rec.get("samples_us") or [])
        self.n = len(s)
        self.min = s[0] if s else None
        self.p50 = percentile(s, 50)
        self.p99 = percentile(s, 99)


def fmt_us(us):
    if us is None:
        return "–"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_ratio(x):
    if x is None:
        return "–"
    return f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def fmt_rate(bytes_, us):
    if not bytes_ or not us:
        return "–"
    return f"{bytes_ / MIB / (us / 1e6):.0f} MiB/s"


def fmt_kb(kb):
    if kb is None or kb < 0:
        return "–"
    return f"{kb / 1024:.1f} MiB"


def goal_word(ok):
    if ok is None:
        return "not measured"
    return "met" if ok else "**missed**"


# ------------------------------------------------------------------- SVG

def svg_bars(path, title, rows, unit_fmt, log_scale, x_label, value_fmt=None):
    """Horizontal bars. rows: (label, value, lo, hi) with optional lo/hi whisker.
    unit_fmt labels the axis ticks, value_fmt (default unit_fmt) the bars."""
    value_fmt = value_fmt or unit_fmt
    rows = [r for r in rows if r[1] is not None and r[1] > 0]
    if not rows:
        return False
    # Room for the longest label at about 6.6 px per character of 12 px sans.
    left = int(min(440, max(200, 20 + 6.6 * max(len(r[0]) for r in rows))))
    width, right, top, bar_h, gap = 600 + left, 40, 50, 22, 10
    height = top + len(rows) * (bar_h + gap) + 50
    vmax = max(max(r[1], r[3] or 0) for r in rows)
    vmin = min(min(r[1], r[2] or r[1]) for r in rows)
    if log_scale:
        lo_exp = math.floor(math.log10(vmin))
        hi_exp = math.ceil(math.log10(vmax))
        if hi_exp == lo_exp:
            hi_exp += 1

        def x(v):
            return left + (math.log10(v) - lo_exp) / (hi_exp - lo_exp) * (width - left - right)
        ticks = [10 ** e for e in range(lo_exp, hi_exp + 1)]
        base = left
    else:
        top_v = vmax * 1.1

        def x(v):
            return left + v / top_v * (width - left - right)
        step = 10 ** math.floor(math.log10(top_v))
        if top_v / step < 4:
            step /= 2
        ticks = [i * step for i in range(int(top_v / step) + 1)]
        base = left

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">{html.escape(title)}</text>']
    axis_y = height - 40
    for t in ticks:
        tx = x(t) if t > 0 or not log_scale else base
        out.append(f'<line x1="{tx:.1f}" y1="{top - 8}" x2="{tx:.1f}" y2="{axis_y}" stroke="#ddd"/>')
        out.append(f'<text x="{tx:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">'
                   f'{html.escape(unit_fmt(t))}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle" '
               f'fill="#333">{html.escape(x_label)}</text>')
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    colours = {}  # one colour per path, whatever its concurrency suffix
    for i, (label, value, lo, hi) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(1.0, x(value) - base)
        colour = colours.setdefault(label.split(" · ")[-1].split(" ×")[0], palette[len(colours) % len(palette)])
        out.append(f'<text x="{left - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<rect x="{base}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}" opacity="0.85"/>')
        if lo and hi and hi > lo:
            cy = y + bar_h / 2
            out.append(f'<line x1="{x(lo):.1f}" y1="{cy}" x2="{x(hi):.1f}" y2="{cy}" stroke="black"/>')
            for v in (lo, hi):
                out.append(f'<line x1="{x(v):.1f}" y1="{y + 4}" x2="{x(v):.1f}" y2="{y + bar_h - 4}" stroke="black"/>')
        out.append(f'<text x="{min(x(max(value, hi or 0)) + 6, width - right):.1f}" y="{y + bar_h * 0.7:.1f}" '
                   f'fill="#222">{html.escape(value_fmt(value))}</text>')
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return True


def us_tick(v):
    for unit, scale in (("s", 1e6), ("ms", 1e3), ("µs", 1.0)):
        if v >= scale:
            return f"{v / scale:g} {unit}"
    return f"{v:g} µs"


def plain_tick(v):
    return f"{v:,.0f}"


# ---------------------------------------------------------------- report

class Report:
    def __init__(self, records, out_dir, meta, notes):
        self.records = records
        self.out_dir = out_dir
        self.meta = meta
        self.notes = notes
        self.lines = []
        self.plots = []

    def find(self, case, subject, concurrency=None):
        for r in self.records:
            if r.get("case") == case and r.get("subject") == subject and "skipped" not in r:
                if concurrency is None or r.get("concurrency") == concurrency:
                    return r
        return None

    def of_case(self, case):
        return [r for r in self.records if r.get("case") == case]

    def w(self, line=""):
        self.lines.append(line)

    def skipped_lines(self, recs):
        for r in recs:
            if "skipped" in r:
                self.w(f"- *{r.get('label', r.get('subject'))}*: not measured — {r['skipped']}")

    def plot(self, name, *args):
        if svg_bars(os.path.join(self.out_dir, name), *args):
            self.w(f"![{args[0]}]({name})")
            self.w()

    # -- sections

    def header(self):
        m = machine_facts()
        mode = self.meta.get("mode", "full")
        self.w("# libcmdop benchmarks")
        self.w()
        self.w(f"Generated by `bench/run{' --quick' if mode == 'quick' else ''}` on "
               f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
               f"{' at commit ' + self.meta['commit'] if self.meta.get('commit') else ''}.")
        if mode == "quick":
            self.w()
            self.w("> **Quick mode**: every case ran only briefly (CI smoke run). The figures show the "
                   "harness works; they are not the measurements. Run `bench/run` on an idle machine for those.")
        self.w()
        self.w(f"- Machine: {m.get('cores', '?')} cores ({m.get('cpu', 'unknown CPU')}), "
               f"{m.get('memory_gib', 0):.1f} GiB memory, Linux {m.get('kernel', '?')}")
        for key in ("rustc", "openssh", "node", "sdk", "cc"):
            if self.meta.get(key):
                self.w(f"- {key}: {self.meta[key]}")
        self.w("- Everything runs on this one machine over loopback (127.0.0.1): the control plane and "
               "the agent as separate processes, a private `sshd` started by the harness, and the clients.")
        self.w("- ssh peers: OpenSSH with default ciphers, key authentication, `sshd` on a loopback port; the "
               "session's HOME is an empty directory so that the account's shell start-up files are not timed "
               "(the agent does not read them either). scp goes through the open ControlMaster.")
        self.w("- Every figure gives its number of runs and min / p50 / p99 (nearest rank; with fewer than "
               "100 runs p99 is the maximum). Ratios compare p50s of this same run.")
        self.w()

    def latency_table(self, rows, base):
        self.w("| path | runs | errors | min | p50 | p99 | p50 ÷ C native p50 |")
        self.w("|---|---:|---:|---:|---:|---:|---:|")
        base_p50 = Stats(base).p50 if base else None
        for r in rows:
            s = Stats(r)
            ratio = s.p50 / base_p50 if base_p50 and s.p50 else None
            note = f" ({r['note']})" if r.get("note") else ""
            self.w(f"| {r['label']}{note} | {r['runs']} | {r['errors']} | {fmt_us(s.min)} | "
                   f"{fmt_us(s.p50)} | {fmt_us(s.p99)} | {fmt_ratio(ratio)} |")
        self.w()

    def latency(self):
        self.w("## `execute(\"true\")` latency, one client, one call in flight")
        self.w()
        recs = self.of_case("latency")
        done = [r for r in recs if "skipped" not in r]
        native = self.find("latency", "c-native")
        self.latency_table(done, native)
        self.skipped_lines(recs)
        self.w()
        ns = Stats(native) if native else None
        sdk = self.find("latency", "node-sdk-default")
        ratio_sdk = Stats(sdk).p50 / ns.p50 if ns and sdk and ns.p50 and Stats(sdk).p50 else None
        self.w("Goals are relative to the local spawn floor of this same run (issue 25); the 64-in-flight "
               "goal is judged in the throughput table below.")
        self.w()
        self.w("| goal | measured | |")
        self.w("|---|---|---|")
        for goal, measured, _, _, verdict in self.latency_goals()[:2]:
            self.w(f"| {goal} | {measured} | {verdict} |")
        self.w(f"| ≥ 100× faster than the official SDK's execute (default settings) | {fmt_ratio(ratio_sdk)} | "
               f"{goal_word(ratio_sdk >= 100 if ratio_sdk else None)} |")
        self.w()
        rows = [(r["label"], Stats(r).p50, Stats(r).min, Stats(r).p99) for r in done]
        self.plot("latency.svg", "execute(\"true\") latency: p50, whiskers min..p99 (log scale)",
                  rows, us_tick, True, "latency per call", fmt_us)

    @staticmethod
    def throughput_order(r):
        """Floor first, then our paths, then peers; grouped by concurrency."""
        order = ["floor", "c-native", "rust-direct", "c-fallback", "ssh-cm"]
        rank = order.index(r["subject"]) if r["subject"] in order else len(order)
        return (r["concurrency"], rank, r["subject"])

    def throughput(self):
        self.w("## Throughput: calls in flight at once")
        self.w()
        self.w("The floor is spawning `sh -c true` locally at the same concurrency (threads, `posix_spawn`). "
               "Our client is shared by all threads of the C bench.")
        self.w()
        recs = self.of_case("throughput")
        done = [r for r in recs if "skipped" not in r]
        self.w(f"| path | in flight | runs | errors | calls/s | p50 | p99 | vs floor | "
               f"goal ≥ {self.THROUGHPUT_SHARE:.0%} of floor at {self.THROUGHPUT_AT} in flight |")
        self.w("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in sorted(done, key=self.throughput_order):
            s = Stats(r)
            floor = self.find("throughput", "floor", r["concurrency"])
            share = r["ops_per_s"] / floor["ops_per_s"] if floor and floor["ops_per_s"] else None
            goal = (goal_word(share >= self.THROUGHPUT_SHARE if share is not None else None)
                    if r["subject"] == "c-native" and r["concurrency"] == self.THROUGHPUT_AT else "")
            self.w(f"| {r['label']} | {r['concurrency']} | {r['runs']} | {r['errors']} | "
                   f"{r['ops_per_s']:,.0f} | {fmt_us(s.p50)} | {fmt_us(s.p99)} | "
                   f"{'–' if share is None else f'{share * 100:.0f}%'} | {goal} |")
        self.w()
        self.skipped_lines(recs)
        self.w()
        rows = [(f"{r['label']} ×{r['concurrency']}", r["ops_per_s"], None, None)
                for r in sorted(done, key=self.throughput_order)]
        self.plot("throughput.svg", "calls per second by calls in flight", rows, plain_tick, False,
                  "completed calls per second")

    def transfer_table(self, case, title, peer_subject, goal_text, goal_ratio):
        recs = self.of_case(case)
        done = [r for r in recs if "skipped" not in r]
        if not recs:
            return []
        self.w(f"### {title}")
        self.w()
        peer = self.find(case, peer_subject)
        peer_p50 = Stats(peer).p50 if peer else None
        self.w("| path | size | runs | errors | min | p50 | p99 | throughput (p50) | vs peer | "
               "peak RSS client | control plane | agent |")
        self.w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in done:
            s = Stats(r)
            ratio = peer_p50 / s.p50 if peer_p50 and s.p50 else None
            rss = r.get("rss_kb", {})
            self.w(f"| {r['label']} | {r['bytes'] / MIB:.0f} MiB | {r['runs']} | {r['errors']} | "
                   f"{fmt_us(s.min)} | {fmt_us(s.p50)} | {fmt_us(s.p99)} | {fmt_rate(r['bytes'], s.p50)} | "
                   f"{fmt_ratio(ratio) if r['subject'] != peer_subject else 'peer'} | "
                   f"{fmt_kb(rss.get('client'))} | {fmt_kb(rss.get('controlplane'))} | {fmt_kb(rss.get('agent'))} |")
        self.w()
        ours = [r for r in done if r["subject"].startswith("c-")]
        for r in ours:
            s = Stats(r)
            ratio = peer_p50 / s.p50 if peer_p50 and s.p50 else None
            text, want = goal_text(r), goal_ratio(r)
            self.w(f"- Goal {text}: {r['label']}: {fmt_ratio(ratio)} — "
                   f"{goal_word(ratio >= want if ratio else None)}")
        self.skipped_lines(recs)
        self.w()
        return [(r["label"], r["bytes"] / MIB / (Stats(r).p50 / 1e6), None, None)
                for r in done if Stats(r).p50]

    def transfers(self):
        self.w("## Bulk data")
        self.w()
        self.w("Peak RSS is VmHWM, reset (`/proc/PID/clear_refs`) before the measured runs; for ssh/scp it "
               "is the client process's own peak (`wait4` rusage). Control plane and agent are only "
               "watched for our own stack.")
        self.w()
        def tagged(kind, rows):
            return [(f"{kind} · {label.removesuffix(' write').removesuffix(' read')}", v, None, None)
                    for label, v, _, _ in rows]
        rows = tagged("output", self.transfer_table(
            "stream", "Output streamed back (`head -c N /dev/zero`)", "ssh-cm",
            lambda r: "≥ 1.5× ssh ControlMaster", lambda r: 1.5))
        rows += tagged("write", self.transfer_table(
            "file-write", "File write (local → machine)", "scp-write",
            lambda r: f"≥ {self.file_goal(r)}× scp", self.file_goal))
        rows += tagged("read", self.transfer_table(
            "file-read", "File read (machine → local)", "scp-read",
            lambda r: f"≥ {self.file_goal(r)}× scp", self.file_goal))
        self.plot("transfer.svg", "bulk data throughput (p50 run)", rows, plain_tick, False, "MiB/s")

    def coldstart(self):
        self.w("## Cold start: create client + connect + set machine + first execute")
        self.w()
        self.w("Each run happens in a fresh child process (library loaded, its runtime not yet started).")
        self.w()
        recs = self.of_case("coldstart")
        done = [r for r in recs if "skipped" not in r]
        self.latency_table(done, self.find("coldstart", "c-native"))
        for r in done:
            s = Stats(r)
            self.w(f"- Goal ≤ 10 ms (plaintext), {r['label']}: p50 {fmt_us(s.p50)} — "
                   f"{goal_word(s.p50 <= 10_000 if s.p50 else None)}")
        self.skipped_lines(recs)
        self.w()

    def abi(self):
        self.w("## C ABI vs the Rust client")
        self.w()
        recs = self.of_case("abi-overhead")
        done = [r for r in recs if "skipped" not in r]
        native = self.find("latency", "c-native")
        if done:
            self.w("`execute(\"true\")` one call in flight: the C bench against `bench/rust` "
                   "(the same client core called from Rust on its own tokio runtime).")
            self.w()
            self.latency_table(([native] if native else []) + done, native)
        rust = self.find("abi-overhead", "rust-direct")
        if rust and native and Stats(rust).p50 and Stats(native).p50:
            overhead = Stats(native).p50 / Stats(rust).p50 - 1
            self.w(f"- Goal C ABI ≤ 5% overhead over the Rust client (p50): {overhead * 100:+.1f}% — "
                   f"{goal_word(overhead <= 0.05)}")
        self.skipped_lines(recs)
        self.w()

    def agents(self):
        recs = self.of_case("agents-10k")
        sim = self.find("agents-10k", "idle-agents")
        n = sim.get("agents", sim["runs"]) if sim else None
        self.w(f"## {n if n else 'Many'} idle agents on one control plane")
        self.w()
        self.w("Simulated agents in one process (`bench/rust`, `cmdop-bench-agents`), each with its own "
               "connection, enrolled with its own one-time token, registered through `ConnectTerminal` "
               "and heartbeating like the real agent; one real agent serves the executes.")
        self.w()
        one = self.find("agents-10k", "exec-1")
        many = self.find("agents-10k", "exec-n")
        lat = [r for r in (one, many) if r]
        if lat:
            self.w("| path | runs | errors | min | p50 | p99 | p50 ÷ 1-agent p50 |")
            self.w("|---|---:|---:|---:|---:|---:|---:|")
            base = Stats(one).p50 if one else None
            for r in lat:
                st = Stats(r)
                ratio = st.p50 / base if base and st.p50 else None
                self.w(f"| {r['label']} | {r['runs']} | {r['errors']} | {fmt_us(st.min)} | {fmt_us(st.p50)} | "
                       f"{fmt_us(st.p99)} | {fmt_ratio(ratio)} |")
            self.w()
        if sim:
            rss = sim.get("rss_kb", {})
            before, after = rss.get("controlplane_before", -1), rss.get("controlplane_after", -1)
            per_agent = (after - before) / n if n and before >= 0 and after >= 0 else None
            st = Stats(sim)
            self.w(f"- {n} agents connected ({sim['errors']} failed) in {sim['wall_s']:.2f} s, "
                   f"{sim['concurrency']} connecting at a time; connect time per agent min {fmt_us(st.min)}, "
                   f"p50 {fmt_us(st.p50)}, p99 {fmt_us(st.p99)}.")
            self.w(f"- Control-plane resident memory: {fmt_kb(before)} before, {fmt_kb(after)} with the agents "
                   f"connected → {'–' if per_agent is None else f'{per_agent:.1f} KiB'} per idle agent.")
            self.w(f"- Goal ≤ 32 KiB control-plane RSS per idle agent: "
                   f"{goal_word(per_agent <= 32 if per_agent is not None else None)}")
        if one and many and Stats(one).p50 and Stats(many).p50:
            ratio = Stats(many).p50 / Stats(one).p50
            self.w(f"- Goal execute p50 with the agents ≤ 1.2× its p50 with one: {fmt_ratio(ratio)} — "
                   f"{goal_word(ratio <= 1.2)}")
        back = self.find("agents-10k", "reconnect")
        if back:
            self.agents_reconnect(back)
        self.skipped_lines(recs)
        self.w()

    def agents_reconnect(self, r):
        """The control-plane restart under the idle agents: how fast all came back."""
        n, back = r["runs"], r.get("agents", 0)
        st = Stats(r)
        self.w()
        self.w(f"Control-plane restart (SIGTERM, then the same port and data directory) under the {n} agents; "
               "they reconnect like the real agent (its backoff with jitter and its probes, "
               "`cmdop_agent::backoff`). Times count from when the new control plane listened.")
        self.w()
        self.w(f"- {back} of {n} agents registered again ({r.get('errors', 0)} not); the control plane was "
               f"down {r.get('down_s', 0):.2f} s (first connection lost → listening again).")
        all_back = r.get("all_back_s", -1)
        self.w(f"- All back (every agent registered at once) after "
               f"{'–' if all_back < 0 else f'{all_back:.2f} s'}; each agent's first return min {fmt_us(st.min)}, "
               f"p50 {fmt_us(st.p50)}, p99 {fmt_us(st.p99)}.")
        self.w(f"- {r.get('attempts', 0)} attempts for {r.get('lost', 0)} lost connections "
               f"({r.get('attempts_before_ready', 0)} before it listened; "
               f"{r.get('registrations', 0)} registrations, so "
               f"{max(r.get('lost', 0) - n, 0)} connections were lost again after registering); peak "
               f"{r.get('peak_registered_per_s', 0)} registrations/s, "
               f"{r.get('peak_attempts_per_s', 0)} attempts/s.")
        per_s = r.get("registered_per_s", [])
        if per_s:
            shown = ", ".join(str(c) for c in per_s[:60])
            more = " …" if len(per_s) > 60 else ""
            self.w(f"- Registrations per second after the restart: {shown}{more}")
        rss = r.get("rss_kb", {}).get("controlplane_after", -1)
        if rss >= 0:
            self.w(f"- Control-plane resident memory with all agents back: {fmt_kb(rss)}.")
        ok = back >= n and 0 <= all_back <= 60
        self.w(f"- Goal all agents back within 60 s of a restart: {goal_word(ok)}")

    def cluster(self):
        cases = ("cluster-latency", "cluster-stream", "cluster-failover", "cluster-rolling", "cluster-db",
                 "cluster-revoke",
                 "cluster-agents")
        recs = [r for c in cases for r in self.of_case(c)]
        if not recs:
            return
        self.w("## Cluster (3 replicas + PostgreSQL)")
        self.w()
        self.w("A private PostgreSQL (system packages, loopback), three `cmdop server` replicas sharing it and "
               "forwarding to each other over their peer ports, one real agent given all three servers; "
               "measured through the Rust client core (`bench/rust`, `cmdop-bench-cluster`). "
               "*Same replica*: the client is connected to the replica holding the agent; *cross-replica*: "
               "to another one, which forwards the call. The two latency paths run interleaved, call by call.")
        self.w()
        self.w("| measurement | runs | errors | min | p50 | p99 / max | vs peer | goal | |")
        self.w("|---|---:|---:|---:|---:|---:|---:|---|---|")
        same = self.find("cluster-latency", "same-replica")
        cross = self.find("cluster-latency", "cross-replica")
        ss, cs = (Stats(same) if same else None), (Stats(cross) if cross else None)

        def row(r, ratio="", goal="", verdict="", size=""):
            st = Stats(r)
            self.w(f"| {r['label']}{size} | {r['runs']} | {r['errors']} | {fmt_us(st.min)} | {fmt_us(st.p50)} | "
                   f"{fmt_us(st.p99)} | {ratio} | {goal} | {verdict} |")

        if same:
            row(same, "peer")
        if cross:
            added = cs.p50 - ss.p50 if ss and ss.p50 and cs.p50 else None
            ratio = f"{fmt_ratio(cs.p50 / ss.p50)} (+{fmt_us(added)})" if added is not None and added >= 0 else (
                f"{fmt_ratio(cs.p50 / ss.p50)} (−{fmt_us(-added)})" if added is not None else "–")
            row(cross, ratio, "adds ≤ 0.3 ms p50", goal_word(added <= 300 if added is not None else None))
        stream = self.find("cluster-stream", "cross-replica")
        peer = self.find("stream", "ssh-cm") or self.find("cluster-stream", "ssh-cm")
        if peer:
            row(peer, "peer", size=f", {peer['bytes'] / MIB:.0f} MiB, {fmt_rate(peer['bytes'], Stats(peer).p50)}")
        home = self.find("cluster-stream", "same-replica")
        if home:
            row(home, "peer", size=f", {home['bytes'] / MIB:.0f} MiB, {fmt_rate(home['bytes'], Stats(home).p50)}")
        if stream:
            st = Stats(stream)
            ratio = Stats(peer).p50 / st.p50 if peer and Stats(peer).p50 and st.p50 else None
            row(stream, fmt_ratio(ratio), "≥ 1.5× ssh ControlMaster", goal_word(ratio >= 1.5 if ratio else None),
                size=f", {stream['bytes'] / MIB:.0f} MiB, {fmt_rate(stream['bytes'], st.p50)}")
        fo = self.find("cluster-failover", "sigkill-agent-replica")
        if fo:
            st = Stats(fo)
            mx = max(fo.get("samples_us") or [0]) or None
            ok = None if st.p50 is None else (st.p50 <= 2e6 and mx is not None and mx <= 5e6 and fo["errors"] == 0)
            self.w(f"| {fo['label']} | {fo['runs']} | {fo['errors']} | {fmt_us(st.min)} | {fmt_us(st.p50)} | "
                   f"{fmt_us(mx)} (max) | | p50 ≤ 2 s, max ≤ 5 s | {goal_word(ok)} |")
        twice = self.find("cluster-failover", "sigkill-twice-3s")
        if twice:
            st = Stats(twice)
            firsts = twice.get("first_us") or []
            worst = max((twice.get("samples_us") or []) + firsts or [0]) or None
            ok = None if st.p50 is None else (worst is not None and worst <= 2e6 and twice["errors"] == 0)
            self.w(f"| {twice['label']} (first kill: max {fmt_us(max(firsts) if firsts else None)}) | "
                   f"{twice['runs']} | {twice['errors']} | {fmt_us(st.min)} | {fmt_us(st.p50)} | "
                   f"{fmt_us(worst)} (max of both) | | each ≤ 2 s | {goal_word(ok)} |")
        rolling = self.find("cluster-rolling", "sigterm-each-replica")
        if rolling and "skipped" not in rolling:
            st = Stats(rolling)
            failed = rolling["errors"]
            self.w(f"| {rolling['label']} ({rolling.get('restarts', '?')} restart(s) of all 3; calls failed: "
                   f"**{failed}**) | {rolling['runs']} | {failed} | {fmt_us(st.min)} | {fmt_us(st.p50)} | "
                   f"{fmt_us(st.p99)} | | 0 calls failed | {goal_word(failed == 0)} |")
        db = [r for r in self.of_case("cluster-db") if "skipped" not in r]
        for r in db:
            d = r.get("db", {})
            per = d.get("per_execute")
            st = Stats(r)
            cred, audit = d.get("credential_per_execute"), d.get("audit_per_execute")
            split = "" if cred is None else (
                f" (credential checks {cred:.3f}, audit trail {audit or 0:.3f} per execute, counted in the total)")
            self.w(f"| {r['label']}: {d.get('unit', '?')} per execute, minus the idle rate{split} | {r['runs']} | "
                   f"{r['errors']} | {fmt_us(st.min)} | {fmt_us(st.p50)} | {fmt_us(st.p99)} | "
                   f"**{'–' if per is None else f'{per:.3f}'}** | none once the route is known | "
                   f"{goal_word(per < 0.01 if per is not None else None)} |")
        rv = self.find("cluster-revoke", "revoke-to-refusal")
        if rv:
            st = Stats(rv)
            took = sorted(rv.get("revoke_key_us") or [])
            took_txt = f"; revoke-key itself p50 {fmt_us(percentile(took, 50))}" if took else ""
            self.w(f"| {rv['label']}{took_txt} | {rv['runs']} | {rv['errors']} (accepted after revoke-key returned) | "
                   f"{fmt_us(st.min)} | {fmt_us(st.p50)} | {fmt_us(st.p99)} | | refused by the time revoke-key "
                   f"returns | {goal_word(rv['errors'] == 0)} |")
        ag = self.find("cluster-agents", "idle-agents")
        for quiet, loaded in (("same-1", "same-n"), ("exec-1", "exec-n")):
            idle = self.find("cluster-agents", quiet)
            busy = self.find("cluster-agents", loaded)
            if idle:
                row(idle, "peer")
            if busy:
                ratio = Stats(busy).p50 / Stats(idle).p50 if idle and Stats(idle).p50 and Stats(busy).p50 else None
                row(busy, fmt_ratio(ratio), "≤ 1.2× idle p50", goal_word(ratio <= 1.2 if ratio else None))
        if ag:
            n = ag.get("agents", ag["runs"])
            rss = ag.get("rss_kb", {})
            before, after = rss.get("controlplane_before", -1), rss.get("controlplane_after", -1)
            per_agent = (after - before) / n if n and before >= 0 and after >= 0 else None
            sims = ag.get("simulators")
            by = f", {sims} simulator processes" if sims else ""
            self.w(f"| {ag['label']}: control-plane RSS per idle agent, summed over the replicas "
                   f"({fmt_kb(before)} → {fmt_kb(after)}{by}) | {n} | {ag['errors']} | | | | "
                   f"{'–' if per_agent is None else f'{per_agent:.1f} KiB'} | ≤ 32 KiB | "
                   f"{goal_word(per_agent <= 32 if per_agent is not None else None)} |")
        kill = self.find("cluster-agents", "sigkill-replica")
        if kill:
            st = Stats(kill)
            back = kill.get("all_back_s", -1)
            spread = [n for i, n in enumerate(kill.get("moved_to") or []) if i != kill.get("killed")]
            share = f"; survivors got {' / '.join(str(n) for n in spread)}" if spread else ""
            self.w(f"| {kill['label']} (time from the kill per agent{share}) | {kill['runs']} | {kill['errors']} | "
                   f"{fmt_us(st.min)} | {fmt_us(st.p50)} | {fmt_us(st.p99)} | "
                   f"{'not all' if back < 0 else f'all in {back:.1f} s'} | all within 30 s | "
                   f"{goal_word(0 <= back <= 30 and kill['errors'] == 0)} |")
        self.w()
        if rolling and "skipped" not in rolling:
            stops = sorted(rolling.get("stop_us") or [])
            took = f" From SIGTERM to exit a replica took p50 {fmt_us(percentile(stops, 50))}." if stops else ""
            self.w("- Rolling restart: each replica in turn (the one holding the agent first) gets SIGTERM, "
                   "drains (its agent moves to another replica at once; calls already running finish) and starts "
                   "again on its address 3 s before the next one stops, while one client per replica (all three "
                   "in its list, that one first) runs `execute(\"true\")` in a loop; every call counts, and the "
                   f"latency columns are those calls.{took}")
        if stream and stream.get("rss_kb"):
            rss = stream["rss_kb"]
            self.w(f"- Peak RSS during the cross-replica stream: client {fmt_kb(rss.get('client'))}, forwarding "
                   f"replica {fmt_kb(rss.get('controlplane'))}, agent's replica {fmt_kb(rss.get('controlplane_agent'))}, "
                   f"agent {fmt_kb(rss.get('agent'))}.")
        if fo:
            rs = sorted(fo.get("restart_us") or [])
            extra = f" Restarting the killed replica took p50 {fmt_us(percentile(rs, 50))}." if rs else ""
            st_ = sorted(fo.get("settle_us") or [])
            if st_:
                extra += (f" Before each kill both survivors must serve the machine: after the previous run's move "
                          f"that took p50 {fmt_us(percentile(st_, 50))}, max {fmt_us(st_[-1])} (not counted above).")
            self.w(f"- Failover: the replica holding the agent (by the `routes` table) is killed with SIGKILL; "
                   f"clients already connected to both survivors retry `execute(\"true\")` (each attempt bounded "
                   f"to 1.5 s, 10 ms apart) until one succeeds; the time runs from the kill. "
                   f"{'Each run starts ' + format(fo['steady_s'], 'g') + ' s after the previous recovery (the agent resets its reconnect backoff once a link stayed up 10 s).' if fo.get('steady_s') else ''}"
                   f"{extra}"
                   f"{' ' + fo['note'] if fo.get('note') else ''}")
        for r in db:
            d = r.get("db", {})
            self.w(f"- Database, {r['label']}: {d.get('during_executes')} {d.get('unit')} during {r['runs']} executes "
                   f"({r['wall_s']:.2f} s), {d.get('idle')} in an idle window of {d.get('idle_window_s', 0):.2f} s "
                   f"(leases, heartbeats; {d.get('background_in_window', 0):.1f} scaled to the execute window).")
            top = d.get("top_during_executes") or []
            if top:
                self.w("  Most frequent during the executes: " + "; ".join(
                    f"{t['calls']}× `{t['query'][:90]}`" for t in top[:3]) + ".")
        self.skipped_lines(recs)
        self.w()
        rows = [(r["label"], Stats(r).p50, Stats(r).min, Stats(r).p99)
                for r in (same, cross, idle, busy) if r and Stats(r).p50]
        self.plot("cluster.svg", "cluster execute(\"true\") latency: p50, whiskers min..p99 (log scale)",
                  rows, us_tick, True, "latency per call", fmt_us)

    # -- performance round 2 (issue 14)

    # "Bounded" resident memory for the hol case: what the control plane or the
    # agent may grow by while the slow reader runs. The reader holds its
    # command back for the whole window, so buffering its output instead
    # would grow by about all `yes` can print in that time (gigabytes).
    HOL_RSS_BOUND_KB = 64 * 1024

    def stat_row(self, r, ratio="", extra=""):
        st = Stats(r)
        self.w(f"| {r['label']}{extra} | {r['runs']} | {r['errors']} | {fmt_us(st.min)} | {fmt_us(st.p50)} | "
               f"{fmt_us(st.p99)} | {ratio} |")

    def round2(self):
        hol = self.of_case("hol")
        tls_subjects = {("stream", "c-native-tls"), ("stream", "tcp-floor"),
                        ("file-write", "c-files-tls"), ("file-read", "c-files-tls")}
        if not hol and not any((r.get("case"), r.get("subject")) in tls_subjects for r in self.records):
            return
        self.w("## Performance round 2 (issue 14)")
        self.w()
        self.w("The TLS stack is the same control plane and agent started with `cmdop server --tls-cert/--tls-key` "
               "(a throwaway CA and a server certificate for 127.0.0.1 made by `openssl`, ECDSA P-256); the agent "
               "dials `https://` and trusts the CA, the C bench trusts it through `cmdop_options.ca_pem_path`. "
               "ssh and scp encrypt with OpenSSH's default cipher. Ratios compare p50s of this same run.")
        self.w()
        verdicts = []  # (goal, measured, runs, verdict)

        # Goal 1: a slow reader slows only its own command.
        idle, busy = self.find("hol", "idle"), self.find("hol", "busy")
        slow = self.find("hol", "slow-reader")
        if hol:
            self.w("### A slow reader next to `execute(\"true\")` (TLS)")
            self.w()
            self.w("`execute(\"true\")` for a fixed time on an idle agent, then again while a second client "
                   "process runs `yes` on the same agent through the streaming call and reads its output at a "
                   "fixed rate (its callback sleeps, so the library's bounded queue and the per-exec credit hold "
                   "`yes` back).")
            self.w()
            ratio = None
            if idle or busy:
                self.w("| path | runs | errors | min | p50 | p99 | p50 ÷ idle p50 |")
                self.w("|---|---:|---:|---:|---:|---:|---:|")
            if idle:
                self.stat_row(idle, "peer")
            if busy:
                if idle and Stats(idle).p50 and Stats(busy).p50:
                    ratio = Stats(busy).p50 / Stats(idle).p50
                self.stat_row(busy, fmt_ratio(ratio))
            if idle or busy:
                self.w()
            verdicts.append(("1. execute p50 with a slow reader ≤ 1.2× idle p50 (TLS)",
                             f"{fmt_us(Stats(busy).p50) if busy else '–'} vs "
                             f"{fmt_us(Stats(idle).p50) if idle else '–'}: {fmt_ratio(ratio)}",
                             f"{busy['runs'] if busy else 0} + {idle['runs'] if idle else 0}",
                             goal_word(ratio <= 1.2 if ratio else None)))
            if not slow:
                verdicts.append(("1. control-plane and agent RSS bounded", "–", "0", goal_word(None)))
            if slow:
                rate = slow.get("read_bytes_per_s")
                limit = slow.get("rate_limit_bytes_per_s")
                self.w(f"- The slow reader read {slow['bytes'] / MIB:.1f} MiB in {slow['wall_s']:.1f} s "
                       f"({'–' if rate is None else f'{rate / MIB:.2f} MiB/s'}, limit "
                       f"{'–' if not limit else f'{limit / MIB:.2f} MiB/s'}); its client's peak RSS "
                       f"{fmt_kb(slow.get('rss_kb', {}).get('client'))}.")
                self.w()
                sampled = slow.get("rss_sampled_kb", {})
                hwm = slow.get("rss_kb", {})
                if not sampled:
                    verdicts.append(("1. control-plane and agent RSS bounded", "–", "0", goal_word(None)))
                if sampled:
                    self.w("Resident memory while it read (VmRSS every 100 ms; VmHWM reset at its start):")
                    self.w()
                    self.w("| process | at start | peak (sampled) | peak (VmHWM) | at end | peak − start |")
                    self.w("|---|---:|---:|---:|---:|---:|")
                    for name in ("controlplane", "agent"):
                        t = sampled.get(name)
                        if not t:
                            continue
                        peak = max(t.get("peak", -1), hwm.get(name, -1))
                        growth = peak - t["start"] if peak >= 0 and t.get("start", -1) >= 0 else None
                        self.w(f"| {'control plane' if name == 'controlplane' else 'agent'} | {fmt_kb(t.get('start'))} | "
                               f"{fmt_kb(t.get('peak'))} | {fmt_kb(hwm.get(name))} | {fmt_kb(t.get('end'))} | "
                               f"{'–' if growth is None else fmt_kb(growth) if growth >= 0 else '0'} |")
                        verdicts.append((f"1. {'control-plane' if name == 'controlplane' else 'agent'} RSS bounded "
                                         f"(peak − start ≤ {self.HOL_RSS_BOUND_KB // 1024} MiB)",
                                         f"{fmt_kb(t.get('start'))} → peak {fmt_kb(peak)}, end {fmt_kb(t.get('end'))}",
                                         "1 slow read",
                                         goal_word(growth <= self.HOL_RSS_BOUND_KB if growth is not None else None)))
                    self.w()
            self.skipped_lines(hol)
            self.w()

        # Goals 2 and 3: encrypted bulk, next to the raw loopback floor.
        floor = self.find("stream", "tcp-floor")
        plain = self.find("stream", "c-native")
        tls = self.find("stream", "c-native-tls")
        ssh = self.find("stream", "ssh-cm")
        floor_p50 = Stats(floor).p50 if floor else None
        ssh_p50 = Stats(ssh).p50 if ssh else None
        stream_rows = [r for r in (floor, plain, tls, ssh) if r]
        if stream_rows:
            self.w("### Bulk output: TLS, plaintext, ssh and the raw loopback floor")
            self.w()
            self.w("The floor copies the same bytes (`head -c N /dev/zero`) through one loopback TCP connection "
                   "with `splice(2)` on both sides (`bench/c/tcp_floor.c`, timed per process like ssh): no "
                   "user-space copy, no framing, no encryption.")
            self.w()
            self.w("| path | size | runs | errors | min | p50 | p99 | throughput (p50) | share of the floor | "
                   "vs ssh ControlMaster |")
            self.w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in stream_rows:
                st = Stats(r)
                share = floor_p50 / st.p50 if floor_p50 and st.p50 else None
                vs_ssh = ssh_p50 / st.p50 if ssh_p50 and st.p50 else None
                self.w(f"| {r['label']} | {r['bytes'] / MIB:.0f} MiB | {r['runs']} | {r['errors']} | {fmt_us(st.min)} | "
                       f"{fmt_us(st.p50)} | {fmt_us(st.p99)} | {fmt_rate(r['bytes'], st.p50)} | "
                       f"{'floor' if r is floor else ('–' if share is None else f'{share * 100:.0f}%')} | "
                       f"{'peer' if r is ssh else fmt_ratio(vs_ssh)} |")
            self.w()

        def bulk_verdict(goal, ours, peer, want):
            if not ours and not peer:
                return
            ratio = Stats(peer).p50 / Stats(ours).p50 if ours and peer and Stats(ours).p50 and Stats(peer).p50 else None
            measured = (f"{fmt_rate(ours['bytes'], Stats(ours).p50) if ours else '–'} vs "
                        f"{fmt_rate(peer['bytes'], Stats(peer).p50) if peer else '–'}: {fmt_ratio(ratio)}")
            runs = f"{ours['runs'] if ours else 0} + {peer['runs'] if peer else 0}"
            verdicts.append((goal, measured, runs, goal_word(ratio >= want if ratio else None)))

        bulk_verdict("2. TLS stream ≥ 1.5× ssh ControlMaster", tls, ssh, 1.5)
        bulk_verdict("2. TLS file write ≥ 1.2× scp", self.find("file-write", "c-files-tls"),
                     self.find("file-write", "scp-write"), 1.2)
        bulk_verdict("2. TLS file read ≥ 1.2× scp", self.find("file-read", "c-files-tls"),
                     self.find("file-read", "scp-read"), 1.2)

        def floor_share(goal, r, want):
            if not r and not floor:
                return
            share = floor_p50 / Stats(r).p50 if r and floor_p50 and Stats(r).p50 else None
            measured = (f"{fmt_rate(r['bytes'], Stats(r).p50) if r else '–'} of "
                        f"{fmt_rate(floor['bytes'], floor_p50) if floor else '–'}: "
                        f"{'–' if share is None else f'{share * 100:.0f}%'}")
            runs = f"{r['runs'] if r else 0} + {floor['runs'] if floor else 0}"
            if want:
                verdict = goal_word(share >= want if share is not None else None)
            else:
                verdict = "reported" if share is not None else goal_word(None)
            verdicts.append((goal, measured, runs, verdict))

        floor_share("3. plaintext stream ≥ 80% of the raw loopback floor", plain, 0.8)
        floor_share("3. TLS stream as a share of the raw loopback floor", tls, None)
        floor_share("3. ssh ControlMaster stream as a share of the raw loopback floor", ssh, None)

        if verdicts:
            self.w("### Goals")
            self.w()
            self.w("| goal | measured (p50) | runs (ours + peer) | |")
            self.w("|---|---|---:|---|")
            for goal, measured, runs, verdict in verdicts:
                self.w(f"| {goal} | {measured} | {runs} | {verdict} |")
            self.w()
        for case, subject in sorted(tls_subjects):
            for r in self.of_case(case):
                if r.get("subject") == subject and "skipped" in r:
                    self.skipped_lines([r])
        self.w()

    # -- performance round 3 (issue 25): every goal relative to a floor or peer of the same run

    LATENCY_P50_FLOOR = 1.4  # execute("true") p50 ≤ 1.4× the floor's p50
    LATENCY_P99_FLOOR = 2.8  # its p99 ≤ 2.8× the floor's p50
    THROUGHPUT_AT = 64
    THROUGHPUT_SHARE = 0.9
    WRITE_OVER_BUFFER_KB = 16 * 1024   # cmdop_write_file: the buffer plus at most this
    DISK_PEAK_KB = 32 * 1024           # cmdop_upload_file / cmdop_download_file peak

    @staticmethod
    def file_goal(r):
        """Files: ≥ 1.5× scp plaintext, ≥ 1.2× over TLS."""
        return 1.2 if r.get("subject", "").endswith("-tls") else 1.5

    @staticmethod
    def runs_line(r):
        if not r:
            return "–"
        st = Stats(r)
        return f"{st.n}: {fmt_us(st.min)} / {fmt_us(st.p50)} / {fmt_us(st.p99)}"

    def latency_goals(self):
        """(goal, measured, runs min/p50/p99, floor or peer, verdict) of execute latency and throughput."""
        out = []
        native, floor = self.find("latency", "c-native"), self.find("latency", "floor")
        ns, fs = (Stats(native) if native else None), (Stats(floor) if floor else None)
        f50 = fs.p50 if fs else None
        for name, value, want in (("p50", ns.p50 if ns else None, self.LATENCY_P50_FLOOR),
                                  ("p99", ns.p99 if ns else None, self.LATENCY_P99_FLOOR)):
            ratio = value / f50 if value and f50 else None
            out.append((f"C native {name} ≤ {want}× the floor's p50 (`sh -c true`)",
                        f"{fmt_us(value)} = {fmt_ratio(ratio)} of {fmt_us(f50)}",
                        self.runs_line(native), f"floor {self.runs_line(floor)}",
                        goal_word(ratio <= want if ratio else None)))
        tn = self.find("throughput", "c-native", self.THROUGHPUT_AT)
        tf = self.find("throughput", "floor", self.THROUGHPUT_AT)
        share = tn["ops_per_s"] / tf["ops_per_s"] if tn and tf and tf.get("ops_per_s") else None
        out.append((f"C native, {self.THROUGHPUT_AT} in flight ≥ {self.THROUGHPUT_SHARE:.0%} of the floor's rate",
                    f"{tn['ops_per_s']:,.0f} of {tf['ops_per_s']:,.0f} calls/s = {share:.0%}" if share is not None
                    else "–", self.runs_line(tn), f"floor {self.runs_line(tf)}",
                    goal_word(share >= self.THROUGHPUT_SHARE if share is not None else None)))
        return out

    def round3(self):
        cases = ("latency", "throughput", "file-write", "file-read", "disk-upload", "disk-download",
                 "cluster-stream", "stream")
        if not any(self.of_case(c) for c in cases):
            return
        rows = list(self.latency_goals())

        def faster(goal, ours, peer, want):
            o, p = (Stats(ours).p50 if ours else None), (Stats(peer).p50 if peer else None)
            ratio = p / o if o and p else None
            rows.append((goal, f"{fmt_rate(ours['bytes'], o) if ours else '–'} vs "
                               f"{fmt_rate(peer['bytes'], p) if peer else '–'}: {fmt_ratio(ratio)}",
                         self.runs_line(ours), f"{peer['label'] if peer else 'peer'} {self.runs_line(peer)}",
                         goal_word(ratio >= want if ratio else None)))

        def share(goal, ours, base, want):
            o, b = (Stats(ours).p50 if ours else None), (Stats(base).p50 if base else None)
            part = b / o if o and b else None
            rows.append((goal, f"{fmt_rate(ours['bytes'], o) if ours else '–'} of "
                               f"{fmt_rate(base['bytes'], b) if base else '–'}: "
                               f"{'–' if part is None else f'{part:.0%}'}",
                         self.runs_line(ours), f"{base['label'] if base else 'base'} {self.runs_line(base)}",
                         goal_word(part >= want if part is not None else None)))

        for case, peer, what in (("file-write", "scp-write", "write"), ("file-read", "scp-read", "read")):
            for subject, tls in (("c-files", False), ("c-files-tls", True)):
                want = 1.2 if tls else 1.5
                faster(f"file {what}{' over TLS' if tls else ', plaintext'} ≥ {want}× scp",
                       self.find(case, subject), self.find(case, peer), want)
        cm = self.find("stream", "ssh-cm") or self.find("cluster-stream", "ssh-cm")
        cross, home = self.find("cluster-stream", "cross-replica"), self.find("cluster-stream", "same-replica")
        share("cross-replica bulk output ≥ 80% of the holding replica's rate", cross, home, 0.8)
        faster("cross-replica bulk output ≥ 1.5× ssh ControlMaster", cross, cm, 1.5)
        share("plaintext stream ≥ 80% of the raw loopback floor", self.find("stream", "c-native"),
              self.find("stream", "tcp-floor"), 0.8)

        def memory(goal, r, limit_kb, over_what):
            peaks = sorted((r or {}).get("client_peak_over_kb") or [])
            worst = peaks[-1] if peaks else None
            exact = (r or {}).get("client_peak_per_call", False)
            measured = (f"{fmt_kb(worst)} over {over_what} at {r['bytes'] / MIB:,.0f} MiB "
                        f"(min / p50 / max {fmt_kb(peaks[0])} / {fmt_kb(percentile(peaks, 50))} / {fmt_kb(worst)})"
                        if worst is not None else "–")
            if worst is not None and not exact:
                measured += " (peak not reset per call: an upper bound)"
            rows.append((goal, measured, str(len(peaks)) if peaks else "–", "–",
                         goal_word(worst <= limit_kb if worst is not None else None)))

        memory(f"cmdop_write_file: client RSS ≤ the buffer + {self.WRITE_OVER_BUFFER_KB // 1024} MiB",
               self.find("file-write", "c-files"), self.WRITE_OVER_BUFFER_KB, "the RSS holding the buffer")
        memory(f"cmdop_upload_file: client RSS flat (≤ {self.DISK_PEAK_KB // 1024} MiB more)",
               self.find("disk-upload", "c-disk"), self.DISK_PEAK_KB, "the RSS before the call")
        memory(f"cmdop_download_file: client RSS flat (≤ {self.DISK_PEAK_KB // 1024} MiB more)",
               self.find("disk-download", "c-disk"), self.DISK_PEAK_KB, "the RSS before the call")

        self.w("## Performance round 3 (issue 25): goals")
        self.w()
        self.w("Every goal compares with a floor or peer measured in this same run. Latency goals are relative "
               "to the local spawn floor (`sh -c true`), since absolute times move with the machine. Memory is "
               "the client's peak resident set during each call over its resident set just before it "
               "(`/proc/self/clear_refs` before each call; the caller's buffer is already resident then).")
        self.w()
        self.w("| goal | measured (p50) | ours: runs: min / p50 / p99 | floor or peer: runs: min / p50 / p99 | |")
        self.w("|---|---|---|---|---|")
        for goal, measured, runs, base, verdict in rows:
            self.w(f"| {goal} | {measured} | {runs} | {base} | {verdict} |")
        self.w()
        for case in ("disk-upload", "disk-download"):
            self.skipped_lines(self.of_case(case))
        self.w()

    def fleet(self):
        recs = self.of_case("fleet")
        if not recs:
            return
        self.w("## One command on 50 machines")
        self.w()
        self.w("`true` on 50 real agents of one control plane, each run one whole command from a shell: "
               "the built-in fan-out (`cmdop exec -l`), today's best shell loop (50 single "
               "`cmdop exec -H HOST` calls, 16 at a time), `parallel-ssh -p 50` to 50 targets on the "
               "loopback sshd (new connections), and the floor: 50 local spawns of `sh -c true` over "
               "the cores.")
        self.w()
        done = [r for r in recs if "skipped" not in r]
        fan = self.find("fleet", "cmdop-fanout")
        self.w("| subject | runs | errors | min | p50 | p99 | p50 ÷ built-in fan-out p50 |")
        self.w("|---|---:|---:|---:|---:|---:|---:|")
        base = Stats(fan).p50 if fan else None
        for r in done:
            s = Stats(r)
            self.stat_row(r, fmt_ratio(s.p50 / base if base and s.p50 else None))
        self.w()
        xargs = self.find("fleet", "xargs-16")
        if fan and xargs and base and Stats(xargs).p50:
            speedup = Stats(xargs).p50 / base
            self.w(f"- Goal: the built-in fan-out ≥ 4× faster than the xargs loop (p50): "
                   f"{speedup:.1f}× — {goal_word(speedup >= 4)}")
        sim = self.find("fleet", "sim")
        if sim and Stats(sim).p50:
            counts = re.search(r"to (\d+) simulated \+ (\d+) real", sim["label"])
            simulated = int(counts.group(1)) if counts else 0
            verdict = (goal_word(Stats(sim).p50 <= 300_000) if simulated >= 1000
                       else f"not judged: {simulated} simulated machines in this run")
            self.w(f"- Goal: a fan-out to 1,000 machines (simulated ones answering at once, plus the real "
                   f"ones) returns every result in ≤ 300 ms p50: {fmt_us(Stats(sim).p50)} for "
                   f"{sim['label'].split(' to ', 1)[-1]} — {verdict}")
        pssh = self.find("fleet", "pssh-50")
        if fan and pssh and base and Stats(pssh).p50:
            self.w(f"- Against parallel-ssh (p50): {Stats(pssh).p50 / base:.0f}× faster")
        if fan and fan.get("rss_kb", {}).get("controlplane", -1) >= 0:
            self.w(f"- Control-plane peak resident memory during the fan-out runs: "
                   f"{fmt_kb(fan['rss_kb']['controlplane'])}.")
        for r in self.of_case("fleet-cpu"):
            self.w(f"- Control-plane CPU per machine, {r['label']}: {r['cpu_us_per_machine']:.0f} µs "
                   f"(user + system over {r['machines']} machine runs, clock ticks of "
                   f"{r['tick_us']} µs).")
        self.skipped_lines(recs)
        self.w()

    def audit(self):
        recs = self.of_case("audit") + self.of_case("audit-64")
        if not recs:
            return
        self.w("## The audit trail's cost")
        self.w()
        self.w("`execute(\"true\")` through the C API against a control plane that puts every exec on "
               "its audit trail before it runs (group commit) and against one started with "
               "`--no-audit`, in the same run: one at a time, and 64 in flight; on SQLite (the "
               "single-server default), then on PostgreSQL (the cluster's engine, a private server "
               "on loopback).")
        self.w()
        self.w("| subject | runs | errors | min | p50 | p99 | |")
        self.w("|---|---:|---:|---:|---:|---:|---:|")
        for r in [r for r in recs if "skipped" not in r]:
            self.stat_row(r)
        self.w()
        for engine, prefix in (("SQLite", ""), ("PostgreSQL", "pg_")):
            on, off = self.find("audit", prefix + "audited"), self.find("audit", prefix + "unaudited")
            if on and off and Stats(on).p50 and Stats(off).p50:
                cost = Stats(on).p50 - Stats(off).p50
                self.w(f"- Goal ({engine}): the trail costs ≤ 0.2 ms p50: {fmt_us(cost)} — "
                       f"{goal_word(cost <= 200)}")
            on, off = self.find("audit-64", prefix + "audited"), self.find("audit-64", prefix + "unaudited")
            if on and off and on.get("ops_per_s") and off.get("ops_per_s"):
                loss = 1 - on["ops_per_s"] / off["ops_per_s"]
                self.w(f"- Goal ({engine}): ≤ 10 % less throughput at 64 in flight: {loss * 100:.1f} % "
                       f"less ({on['ops_per_s']:,.0f} vs {off['ops_per_s']:,.0f} calls/s) — "
                       f"{goal_word(loss <= 0.10)}")
        self.skipped_lines(recs)
        self.w()

    def changes(self):
        self.w("## What we changed and what it gave")
        self.w()
        if self.notes and os.path.exists(self.notes):
            with open(self.notes, encoding="utf-8") as f:
                self.w(f.read().rstrip())
        else:
            self.w("Nothing yet: this is the baseline.")
        self.w()

    def reproduce(self):
        self.w("## Reproduce")
        self.w()
        self.w("```sh")
        self.w("bench/run            # full run: release build, every case, this file + plots in bench/")
        self.w("bench/run --quick    # every case briefly (what CI runs); output under target/bench/")
        self.w("```")
        self.w()
        self.w("Raw records (one JSON line per measurement, every sample) are kept next to the report as "
               "`results.jsonl`.")

    def write(self):
        self.header()
        self.latency()
        self.throughput()
        self.transfers()
        self.coldstart()
        self.abi()
        self.agents()
        self.cluster()
        self.round2()
        self.round3()
        self.fleet()
        self.audit()
        self.changes()
        self.reproduce()
        path = os.path.join(self.out_dir, "BENCHMARKS.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.lines).rstrip() + "\n")
        return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--out", required=True, help="directory for BENCHMARKS.md and the SVG plots")
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--notes", help="markdown for the 'what we changed' section")
    args = ap.parse_args()
    meta = {}
    for kv in args.meta:
        key, sep, value = kv.partition("=")
        if not sep:
            sys.exit(f"report.py: --meta wants KEY=VALUE, got {kv!r}")
        meta[key] = value
    os.makedirs(args.out, exist_ok=True)
    path = Report(load_records(args.results), args.out, meta, args.notes).write()
    print(path)


if __name__ == "__main__":
    main()
