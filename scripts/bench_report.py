#!/usr/bin/env python3
"""Turns the raw runs of scripts/bench.sh into the markdown table and the gnuplot PNGs.

Raw rows (tab-separated): section path fs consumers run status gbps rps pps cpu bytes secs note.
Latency rows reuse gbps/rps/pps for p50/p99/p99.9 in microseconds; latency-hop rows (path:hop)
too, with the sample count in cpu. Medians over the runs that
succeeded, with their min-max; a path whose runs all failed or that the build lacks gets no number.
"""
import argparse
import statistics
import subprocess
from collections import defaultdict

PATH_DOC = {
    "kafka-copy": "Kafka TCP, `--io copy` (read+write)",
    "kafka-sendfile": "Kafka TCP, `--io sendfile`",
    "kafka-tls": "Kafka TCP over TLS (`--kafka-listen-ssl`, rustls; record bytes copied)",
    "udp-sendmmsg": "fetch protocol, kernel UDP sendmmsg",
    "udp-gso": "fetch protocol, kernel UDP GSO",
    "xdp-copy": "fetch protocol, AF_XDP `--tx-strategy copy`",
    "xdp-sg": "fetch protocol, AF_XDP `--tx-strategy sg`",
    "ceil-iperf3": "ceiling: iperf3 -Z (TCP sendfile, 1 stream)",
    "ceil-sendfile": "ceiling: raw sendfile loop of the log segment, no protocol",
    "ceil-xdp-raw-copy": "ceiling: raw AF_XDP TX generator `--tx-strategy copy`, no protocol, no log",
    "ceil-xdp-raw-sg": "ceiling: raw AF_XDP TX generator `--tx-strategy sg`, no protocol, no log",
    "kafka-longpoll": "Kafka TCP long-poll (`--io sendfile`)",
    "udp-kernel": "fetch protocol, kernel UDP",
    "udp-kernel-busypoll": "fetch protocol, kernel UDP, `--fetch-busy-poll`",
    "xdp-busypoll-off": "fetch protocol, AF_XDP, busy poll off",
    "xdp-busypoll-on": "fetch protocol, AF_XDP, `--busy-poll`",
    "kafka-longpoll-spin": "Kafka TCP long-poll, spinning consumer",
    "kafka-longpoll-busypoll": "Kafka TCP long-poll, `--kafka-busy-poll`",
    "kafka-longpoll-busypoll-spin": "Kafka TCP long-poll, `--kafka-busy-poll`, spinning consumer",
    "udp-kernel-busypoll-spin": "fetch protocol, kernel UDP, `--fetch-busy-poll`, spinning consumer",
    "xdp-busypoll-on-spin": "fetch protocol, AF_XDP, `--busy-poll`, spinning consumer",
}


def num(x):
    try:
        return float(x)
    except ValueError:
        return None


class Cell:
    """The runs of one (section, path, fs, consumers)."""

    def __init__(self):
        self.rows = []

    def ok(self):
        return [r for r in self.rows if r["status"] == "ok"]

    def status(self):
        if self.ok():
            return "ok"
        if any(r["status"] == "failed" for r in self.rows):
            return "failed"
        return "n/a"

    def values(self, key):
        return [v for v in (num(r[key]) for r in self.ok()) if v is not None]

    def median(self, key):
        v = self.values(key)
        return statistics.median(v) if v else None

    def span(self, key, fmt):
        v = self.values(key)
        if not v:
            return None
        m = fmt(statistics.median(v))
        if len(v) == 1:
            return m
        return f"{m} ({fmt(min(v))}–{fmt(max(v))})"

    def notes(self):
        ok_notes = sorted({r["note"] for r in self.ok() if r["note"] not in ("", "-")})
        failed = [r for r in self.rows if r["status"] == "failed"]
        if failed:
            first = failed[0]["note"]
            ok_notes.append(f"{len(failed)}/{len(self.rows)} runs failed (run {failed[0]['run']}: {first})")
        return "; ".join(ok_notes)


def f2(x):
    return f"{x:.2f}"


def f3(x):
    return f"{x:.3f}"


def f1(x):
    return f"{x:.1f}"


def big(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}x"


def unavailable(cell):
    if cell is None or cell.status() == "n/a":
        return "not available"
    return "failed (run log kept)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True, help="output path without extension")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--fanout", default="1 4 16")
    a = ap.parse_args()

    keys = "section path fs consumers run status gbps rps pps cpu bytes secs note".split()
    cells = defaultdict(Cell)
    order = []
    with open(a.raw) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < len(keys):
                parts += [""] * (len(keys) - len(parts))
            r = dict(zip(keys, parts[: len(keys) - 1] + ["\t".join(parts[len(keys) - 1 :])]))
            k = (r["section"], r["path"], r["fs"], int(r["consumers"]))
            if k not in cells:
                order.append(k)
            cells[k].rows.append(r)

    def get(section, path, fs, n=1):
        return cells.get((section, path, fs, n))

    def med(section, path, fs, key, n=1):
        c = get(section, path, fs, n)
        return c.median(key) if c else None

    md = []
    md.append(f"# kxgw benchmark, MTU {a.out.rsplit('mtu', 1)[-1]}\n")
    md.append(f"**Machine:** {a.machine}\n")
    md.append(f"**Log:** {a.log}. Consumer-side figures; medians of the runs with (min–max).\n")
    md.append("## Throughput, one consumer\n")
    md.append(
        "| path | log on | Gbit/s | records/s | packets/s | gateway CPU s/GiB | Gbit/s vs copy | CPU/GiB vs copy | vs ceiling | vs iperf3 -Z | notes |"
    )
    md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    plot_rows = []
    iperf = med("ceiling", "ceil-iperf3", "-", "gbps")
    for section in ("paths", "ceiling"):
        for k in order:
            if k[0] != section or k[3] != 1:
                continue
            _, path, fs, _ = k
            c = cells[k]
            label = PATH_DOC.get(path, path)
            if c.status() != "ok":
                md.append(f"| {label} | {fs} | {unavailable(c)} | | | | | | | | {c.notes()} |")
                continue
            g = c.median("gbps")
            copy_g = med("paths", "kafka-copy", fs, "gbps")
            copy_cpu = med("paths", "kafka-copy", fs, "cpu")
            if path.startswith("kafka-"):
                ceil = med("ceiling", "ceil-sendfile", fs, "gbps")
            elif path in ("xdp-copy", "xdp-sg"):
                ceil = med("ceiling", "ceil-xdp-raw-" + path[4:], "-", "gbps")
            elif path.startswith("udp-"):
                raws = [med("ceiling", p, "-", "gbps") for p in ("ceil-xdp-raw-copy", "ceil-xdp-raw-sg")]
                raws = [r for r in raws if r is not None]
                ceil = max(raws) if raws else None
            else:
                ceil = None
            rps = c.span("rps", big) if c.values("rps") else "–"
            pps = c.span("pps", big) if c.values("pps") else "–"
            cpu = c.span("cpu", f3) if c.values("cpu") else "–"
            vs_copy = ratio(g, copy_g) if section == "paths" else "–"
            cpu_vs = ratio(c.median("cpu"), copy_cpu) if section == "paths" else "–"
            md.append(
                f"| {label} | {fs} | {c.span('gbps', f2)} | {rps} | {pps} | {cpu} | {vs_copy} | {cpu_vs} | "
                f"{ratio(g, ceil)} | {ratio(g, iperf)} | {c.notes()} |"
            )
            v = c.values("gbps")
            plot_rows.append((path if fs == "-" else f"{path} {fs}", g, min(v), max(v)))
    md.append("")
    md.append(
        "Ceiling of a path: the raw sendfile loop on the same filesystem for the Kafka TCP paths, the raw "
        "AF_XDP TX generator with the same TX strategy for the AF_XDP paths, the faster raw AF_XDP generator "
        "for the kernel-UDP paths. Every ceiling's receiver does the consumers' per-byte work: CRC32C over every byte "
        "(`stream-client --crc`, `raw-udp-client --crc`). packets/s = packets received by the consumer-side "
        "veth (TCP: GRO/GSO super-packets, not wire segments). Gateway CPU = utime+stime of the gateway "
        "process plus the softirq time of its CPU (on veth that includes the receive side's softirq "
        "processing, which runs on the sender's CPU).\n"
    )

    fan_ns = [int(x) for x in a.fanout.split()]
    fan_paths = sorted({k[1] for k in order if k[0] == "fanout"}, key=lambda p: list(PATH_DOC).index(p) if p in PATH_DOC else 99)
    fan_plot = {}
    if fan_paths:
        md.append("## Fan-out: consumers of one partition (tmpfs log)\n")
        md.append("| path | consumers | aggregate Gbit/s | gateway CPU s/GiB | aggregate vs 1 consumer | notes |")
        md.append("| --- | --- | --- | --- | --- | --- |")
        for path in fan_paths:
            base = med("paths", path, "tmpfs", "gbps")
            for n in fan_ns:
                c = get("paths", path, "tmpfs", 1) if n == 1 else get("fanout", path, "tmpfs", n)
                label = PATH_DOC.get(path, path)
                if c is None or c.status() != "ok":
                    md.append(f"| {label} | {n} | {unavailable(c)} | | | {c.notes() if c else ''} |")
                    continue
                g = c.median("gbps")
                cpu = c.span("cpu", f3) if c.values("cpu") else "–"
                chg = "–" if n == 1 or base is None else f"{(g / base - 1) * 100:+.0f}%"
                md.append(f"| {label} | {n} | {c.span('gbps', f2)} | {cpu} | {chg} | {c.notes()} |")
                v = c.values("gbps")
                fan_plot.setdefault(path, []).append((n, g, min(v), max(v)))
        md.append("")

    lat = [k for k in order if k[0] == "latency"]
    if lat:
        md.append("## Tailing latency: produce-to-consume delay (µs)\n")
        md.append("| path | p50 | p99 | p99.9 | p99 vs Kafka long-poll | notes |")
        md.append("| --- | --- | --- | --- | --- | --- |")
        kafka_p99 = med("latency", "kafka-longpoll", "tmpfs", "rps")
        for k in lat:
            c = cells[k]
            label = PATH_DOC.get(k[1], k[1])
            if c.status() != "ok":
                md.append(f"| {label} | {unavailable(c)} | | | | {c.notes()} |")
                continue
            md.append(
                f"| {label} | {c.span('gbps', f1)} | {c.span('rps', f1)} | {c.span('pps', f1)} | "
                f"{ratio(c.median('rps'), kafka_p99)} | {c.notes()} |"
            )
        md.append("")

    hops = [k for k in order if k[0] == "latency-hop"]
    if hops:
        md.append("## Tailing latency per hop, per record (µs)\n")
        md.append(
            "Each record of a tailing row, split at the gateway's own timestamps (its tail "
            "trace, `kxgw stats --tail-trace`, joined with the probe's records by "
            "`kxgw-bench tail-hops`; one clock, CLOCK_MONOTONIC, for producer, gateway and "
            "probe): append_detect, the producer's stamp just before its write to the refresh "
            "that found the growth (inotify event read, or the busy poller's size check); "
            "detect_validate, to the new bytes CRC-checked and readable; validate_send, to the "
            "first datagram (or the Kafka response) carrying the record handed to the transport; "
            "send_arrival, to the probe having it. A record's four hops add up to its delay "
            "above; samples: the records joined.\n"
        )
        md.append("| path | hop | p50 | p99 | p99.9 | samples | notes |")
        md.append("| --- | --- | --- | --- | --- | --- | --- |")
        for k in hops:
            c = cells[k]
            path, _, hop = k[1].partition(":")
            label = PATH_DOC.get(path, path)
            if c.status() != "ok":
                md.append(f"| {label} | {hop} | {unavailable(c)} | | | | {c.notes()} |")
                continue
            md.append(
                f"| {label} | {hop} | {c.span('gbps', f1)} | {c.span('rps', f1)} | "
                f"{c.span('pps', f1)} | {c.span('cpu', big)} | {c.notes()} |"
            )
        md.append("")

    name = a.out.rsplit("/", 1)[-1]
    pngs = plot(a.out, plot_rows, fan_plot)
    for title, png in pngs:
        md.append(f"![{title}]({png})\n")
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(md))
    del name


def plot(out, rows, fan):
    """Writes the PNGs with gnuplot; returns (title, file name) pairs that were written."""
    written = []
    base = out.rsplit("/", 1)[-1]
    data = out + "-throughput.dat"
    with open(data, "w") as f:
        for label, g, lo, hi in rows:
            if g is None:
                f.write(f'"{label}" 0 0 0\n')
            else:
                f.write(f'"{label}" {g} {lo} {hi}\n')
    png = out + "-throughput.png"
    script = f"""
set terminal pngcairo size 1100,520 noenhanced font ",10"
set output "{png}"
set title "kxgw consumer-side throughput, one consumer ({base}); bars: median, whiskers: min-max"
set ylabel "Gbit/s"
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.6 border -1
set xtics rotate by -35 left
set yrange [0:*]
set grid ytics
set key off
plot "{data}" using 2:3:4:xtic(1) lc rgb "#3572a5"
"""
    if run_gnuplot(script):
        written.append(("throughput", png.rsplit("/", 1)[-1]))
    if fan:
        data = out + "-fanout.dat"
        with open(data, "w") as f:
            for path, pts in fan.items():
                f.write(f'# {path}\n')
                for n, g, lo, hi in sorted(pts):
                    f.write(f"{n} {g} {lo} {hi}\n")
                f.write("\n\n")
        png = out + "-fanout.png"
        plots = ", ".join(
            f'"{data}" index {i} using 1:2:3:4 with yerrorlines title "{p}"' for i, p in enumerate(fan)
        )
        script = f"""
set terminal pngcairo size 800,480 noenhanced font ",10"
set output "{png}"
set title "fan-out: aggregate throughput of N consumers of one partition ({base})"
set xlabel "consumers"
set ylabel "aggregate Gbit/s"
set logscale x 2
set yrange [0:*]
set grid
set key bottom left
plot {plots}
"""
        if run_gnuplot(script):
            written.append(("fan-out", png.rsplit("/", 1)[-1]))
    return written


def run_gnuplot(script):
    try:
        subprocess.run(["gnuplot"], input=script.encode(), check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", b"") or b""
        print(f"bench_report: gnuplot failed: {e} {err.decode(errors='replace')}")
        return False


if __name__ == "__main__":
    main()
