#!/usr/bin/env python3
"""Turns the raw runs of scripts/bench.sh into the markdown table and the gnuplot PNGs.

Raw rows (tab-separated): section path fs consumers run status gbps rps pps cpu bytes secs note.
Latency rows reuse gbps/rps/pps for p50/p99/p99.9 in microseconds; latency-hop rows (path:hop)
too, with the sample count in cpu. A tailing path is named <path>@<MTU> (a bare <path>, as
runs before --lat-mtus wrote, is at the throughput MTU); <path>-spin is <path> with a spinning
consumer. Medians over the runs that
succeeded, with their min-max; a path whose runs all failed or that the build lacks gets no number.
"""
import argparse
import re
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
    "kafka-longpoll-busypoll": "Kafka TCP long-poll, `--kafka-busy-poll`",
}

# The tailing rows the ratios and targets compare (issue 18): Kafka long-poll with a blocking
# consumer, as stock clients run; Kafka with the listener's busy poll and a spinning consumer,
# the fair comparison; AF_XDP with busy poll and a spinning consumer, the fast path.
KAFKA_BLOCKING = "kafka-longpoll"
KAFKA_BUSY_SPIN = "kafka-longpoll-busypoll-spin"
FAST_PATH = "xdp-busypoll-on-spin"


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

    def trace_notes(self):
        """The per-run trace notes of a latency-hop row ("J of R records traced, P by parked
        polls[, C samples below 0 counted as 0]"), summed over the runs: one line, not one
        per run. Notes of another shape are kept as they are."""
        total = [0, 0, 0, 0]
        other = set()
        pat = re.compile(r"^(\d+) of (\d+) records traced, (\d+) by parked polls(?:, (\d+) samples below 0 counted as 0)?$")
        for r in self.ok():
            m = pat.match(r["note"])
            if m:
                for i, g in enumerate(m.groups()):
                    total[i] += int(g or 0)
            elif r["note"] not in ("", "-"):
                other.add(r["note"])
        runs = len(self.ok())
        out = sorted(other)
        if total[1]:
            s = f"{runs} runs: {total[0]} of {total[1]} records traced, {total[2]} by parked polls"
            if total[3]:
                s += f", {total[3]} samples below 0 counted as 0"
            out.insert(0, s)
        failed = [r for r in self.rows if r["status"] == "failed"]
        if failed:
            out.append(f"{len(failed)}/{len(self.rows)} runs failed (run {failed[0]['run']}: {failed[0]['note']})")
        return "; ".join(out)


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


def split_mtu(label, default):
    """'<path>@<MTU>' -> (path, MTU); a bare label is at the default MTU."""
    path, sep, mtu = label.rpartition("@")
    return (path, mtu) if sep else (label, default)


def tail_doc(kind):
    """(label, consumer) of a tailing path: <path>-spin is <path> with a spinning consumer."""
    spin = kind.endswith("-spin")
    base = kind[: -len("-spin")] if spin else kind
    return PATH_DOC.get(base, base), ("spinning" if spin else "blocking")


HOP_DOC = (
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


class Tailing:
    """The tailing-latency rows of a run by MTU: the tables, the targets, the hops and their plot."""

    def __init__(self, cells, order, default_mtu):
        self.lat = {}  # MTU -> [(path, cell)], in run order
        self.hops = {}  # MTU -> [(path, hop, cell)]
        for k in order:
            if k[0] == "latency":
                kind, mtu = split_mtu(k[1], default_mtu)
                self.lat.setdefault(mtu, []).append((kind, cells[k]))
            elif k[0] == "latency-hop":
                path, _, hop = k[1].partition(":")
                kind, mtu = split_mtu(path, default_mtu)
                self.hops.setdefault(mtu, []).append((kind, hop, cells[k]))

    def mtus(self):
        return list(dict.fromkeys(list(self.lat) + list(self.hops)))

    def med(self, mtu, kind, key):
        c = next((c for k, c in self.lat.get(mtu, []) if k == kind), None)
        return c.median(key) if c else None

    def tables(self):
        md = []
        for mtu, rows in self.lat.items():
            md.append(f"## Tailing latency at MTU {mtu}: produce-to-consume delay (µs)\n")
            md.append(
                "| path | consumer | p50 | p99 | p99.9 | p99 vs Kafka long-poll | "
                "p99 vs Kafka busy poll, spinning | notes |"
            )
            md.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
            blocking = self.med(mtu, KAFKA_BLOCKING, "rps")
            fair = self.med(mtu, KAFKA_BUSY_SPIN, "rps")
            for kind, c in rows:
                label, consumer = tail_doc(kind)
                if c.status() != "ok":
                    md.append(f"| {label} | {consumer} | {unavailable(c)} | | | | | {c.notes()} |")
                    continue
                p99 = c.median("rps")
                md.append(
                    f"| {label} | {consumer} | {c.span('gbps', f1)} | {c.span('rps', f1)} | "
                    f"{c.span('pps', f1)} | {ratio(p99, blocking)} | {ratio(p99, fair)} | {c.notes()} |"
                )
            md.append("")
        if self.lat:
            md.append(
                "p99 ratios: over Kafka TCP long-poll with a blocking consumer (as stock clients "
                "run), and over Kafka TCP long-poll with `--kafka-busy-poll` and a spinning consumer, "
                "at the same MTU in the same run. A spinning consumer polls its non-blocking socket "
                "instead of sleeping in it.\n"
            )
        return md

    def targets(self):
        """Issue 18's targets against this run's medians, per MTU."""
        if not self.lat:
            return []
        mtus = list(self.lat)
        fast = "AF_XDP `--busy-poll`, spinning consumer"
        rows = [
            (f"{fast}: p99 ≤ 0.2x Kafka long-poll, blocking consumer", lambda m: self.vs(m, KAFKA_BLOCKING, 0.2)),
            (
                f"{fast}: p99 ≤ 0.5x Kafka long-poll, `--kafka-busy-poll`, spinning consumer",
                lambda m: self.vs(m, KAFKA_BUSY_SPIN, 0.5),
            ),
            (f"{fast}: p50 ≤ 20 µs", self.p50_within),
        ]
        md = ["## Tailing targets (issue 18)\n"]
        md.append("| target | " + " | ".join(f"MTU {m}" for m in mtus) + " |")
        md.append("| --- |" + " --- |" * len(mtus))
        for name, cell in rows:
            md.append(f"| {name} | " + " | ".join(cell(m) for m in mtus) + " |")
        md.append("")
        md.append(
            "Medians of this run's tailing rows; the issue checks two `--quick` runs on a quiet machine.\n"
        )
        return md

    def vs(self, mtu, kafka, limit):
        a, b = self.med(mtu, FAST_PATH, "rps"), self.med(mtu, kafka, "rps")
        if a is None or b is None or b == 0:
            return "not measured"
        r = a / b
        return f"{r:.2f}x ({a:.1f} vs {b:.1f} µs): {'met' if r <= limit else 'not met'}"

    def p50_within(self, mtu, limit=20.0):
        a = self.med(mtu, FAST_PATH, "gbps")
        if a is None:
            return "not measured"
        return f"{a:.1f} µs: {'met' if a <= limit else 'not met'}"

    def hop_table(self):
        if not self.hops:
            return []
        md = ["## Tailing latency per hop, per record (µs)\n", HOP_DOC]
        md.append("| MTU | path | consumer | hop | p50 | p99 | p99.9 | samples | notes |")
        md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for mtu, rows in self.hops.items():
            for kind, hop, c in rows:
                label, consumer = tail_doc(kind)
                if c.status() != "ok":
                    md.append(f"| {mtu} | {label} | {consumer} | {hop} | {unavailable(c)} | | | | {c.notes()} |")
                    continue
                md.append(
                    f"| {mtu} | {label} | {consumer} | {hop} | {c.span('gbps', f1)} | {c.span('rps', f1)} | "
                    f"{c.span('pps', f1)} | {c.span('cpu', big) or '–'} | {c.trace_notes()} |"
                )
        md.append("")
        return md

    def plot_hops(self, out):
        """One PNG per MTU: p50 and p99 (medians of the runs) of every hop of every tailing path."""
        written = []
        base = out.rsplit("/", 1)[-1]
        for mtu, rows in self.hops.items():
            if not any(c.status() == "ok" for _, _, c in rows):
                continue
            hops = list(dict.fromkeys(h for _, h, _ in rows))
            kinds = list(dict.fromkeys(k for k, _, _ in rows))
            cell = {(k, h): c for k, h, c in rows}

            def value(kind, hop, key):
                c = cell.get((kind, hop))
                v = c.median(key) if c else None
                # A log axis cannot show 0: such a bar is left out (the table has the value).
                return "-" if v is None or v <= 0 else f"{v}"

            data = f"{out}-hops-mtu{mtu}.dat"
            with open(data, "w") as f:
                for k in kinds:
                    cols = [value(k, h, "gbps") for h in hops] + [value(k, h, "rps") for h in hops]
                    f.write(f'"{k}" ' + " ".join(cols) + "\n")
            png = f"{out}-hops-mtu{mtu}.png"

            def panel(first):
                return ", ".join(f'"{data}" using {first + i}:xtic(1) title "{h}"' for i, h in enumerate(hops))

            script = f"""
set terminal pngcairo size 1100,900 noenhanced font ",10"
set output "{png}"
set datafile missing "-"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.7 border -1
set logscale y
set grid ytics
set key top left
set xtics rotate by 30 right
set multiplot layout 2,1 title "tailing latency per hop at MTU {mtu} ({base}): medians of the runs"
set ylabel "p50 (µs)"
plot {panel(2)}
set ylabel "p99 (µs)"
plot {panel(2 + len(hops))}
unset multiplot
"""
            if run_gnuplot(script):
                written.append((f"tailing latency per hop, MTU {mtu}", png.rsplit("/", 1)[-1]))
        return written


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

    mtu = a.out.rsplit("mtu", 1)[-1]
    tail = Tailing(cells, order, mtu)
    lat_mtus = tail.mtus()
    title = f"# kxgw benchmark, MTU {mtu}"
    if lat_mtus and lat_mtus != [mtu]:
        named = " and ".join([", ".join(lat_mtus[:-1]), lat_mtus[-1]]) if len(lat_mtus) > 1 else lat_mtus[0]
        title += f" (tailing latency at MTU {named})"
    md = [title + "\n"]
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

    md.extend(tail.tables())
    md.extend(tail.targets())
    md.extend(tail.hop_table())

    pngs = plot(a.out, plot_rows, fan_plot) + tail.plot_hops(a.out)
    for title, png in pngs:
        md.append(f"![{title}]({png})\n")
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(md))


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
