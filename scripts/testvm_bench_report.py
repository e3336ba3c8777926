#!/usr/bin/env python3
"""Turns the raw runs of `scripts/testvm.sh --bench` into a markdown table.

Raw rows (tab-separated, written in the guest by scripts/testvm-bench.sh):
nic path run status gbps rps cpu bytes secs note. Medians over the runs that succeeded, with
their min-max (the cells and their formatting are scripts/bench_report.py's); a path whose
runs all failed gets no number.
"""
import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import Cell, big, f3, ratio  # noqa: E402

PATHS = {
    "xdp-zc": "AF_XDP zero-copy (`--xdp-bind zero-copy`)",
    "xdp-copy": "AF_XDP copy mode (`--xdp-bind copy`)",
    "udp-sendmmsg": "kernel UDP sendmmsg (`--udp-gso off`)",
    "kafka-sendfile": "Kafka TCP, `--io sendfile`",
}
NICS = {
    "igb": "igb (QEMU's Intel 82576 model)",
    "virtio-net": "virtio-net (`iommu_platform=on`)",
}


def f4(x):
    return f"{x:.4f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--runs", required=True)
    a = ap.parse_args()

    keys = "nic path run status gbps rps cpu bytes secs note".split()
    cells = defaultdict(Cell)
    nics, paths = [], []
    with open(a.raw) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (len(keys) - len(parts))
            r = dict(zip(keys, parts))
            if r["nic"] not in nics:
                nics.append(r["nic"])
            if r["path"] not in paths:
                paths.append(r["path"])
            cells[(r["nic"], r["path"])].rows.append(r)
    paths.sort(key=lambda p: list(PATHS).index(p) if p in PATHS else 99)

    md = [
        "# kxgw VM bench: serving paths side by side on emulated NICs\n",
        "**What this shows, and what not:** every row ran in one QEMU guest under TCG (software "
        "CPU emulation) on the same emulated NIC, alternating between paths. The figures are "
        "**ratios between the paths inside this VM**, not hardware speed: the emulated NIC's "
        "\"DMA\" is QEMU copying memory, every instruction is emulated (10-50x slower than "
        "native), and the host's CPUs are shared. Zero-copy here proves the mechanism (the NIC "
        "model reads the frames from the UMEM) and shows what it saves in gateway CPU inside the "
        "guest; what a real NIC gains is for a hardware run to show.\n",
        f"**Machine:** {a.machine}\n",
        f"**Log:** {a.log}. {a.runs} run(s) per path. Consumer-side figures: medians of the runs "
        "with (min–max).\n",
    ]
    for nic in nics:
        md.append(f"## {NICS.get(nic, nic)}\n")
        md.append(
            "| path | consumer Gbit/s | records/s | gateway CPU s/GiB | Gbit/s vs copy mode | "
            "CPU/GiB vs copy mode | Gbit/s vs Kafka sendfile | CPU/GiB vs Kafka sendfile | "
            "bind mode and TX strategy (as the gateway logged them) |"
        )
        md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        ref = {
            p: (cells[(nic, p)].median("gbps"), cells[(nic, p)].median("cpu"))
            for p in ("xdp-copy", "kafka-sendfile")
            if (nic, p) in cells
        }
        for path in paths:
            c = cells.get((nic, path))
            label = PATHS.get(path, path)
            if c is None:
                continue
            if c.status() != "ok":
                md.append(f"| {label} | failed (no run succeeded) | | | | | | | {c.notes()} |")
                continue
            g, cpu = c.median("gbps"), c.median("cpu")
            cols = []
            for p in ("xdp-copy", "kafka-sendfile"):
                rg, rc = ref.get(p, (None, None))
                cols += [ratio(g, rg), ratio(cpu, rc)]
            md.append(
                f"| {label} | {c.span('gbps', f4)} | {c.span('rps', big)} | {c.span('cpu', f3)} | "
                + " | ".join(cols)
                + f" | {c.notes()} |"
            )
        md.append("")
    md.append(
        "Consumer: `kxgw-bench fetch-load` (fetch protocol) or `kxgw-bench kafka-load` (Kafka "
        "Fetch v11), one consumer from offset 0 to the log end, CRC32C of every batch, pinned "
        "to vCPU 1. Gbit/s = batch bytes delivered / time from the consumer's start to its last "
        "record. Gateway CPU = utime+stime of the `kxgw serve` process (pinned to vCPU 0) plus "
        "vCPU 0's softirq time over the run (the gateway NIC's interrupts are on vCPU 0, so its "
        "driver work, AF_XDP zero-copy TX included, is counted). In zero-copy single-buffer mode "
        "(igb and virtio-net refuse `XDP_USE_SG` with zero-copy) every packet is one descriptor: "
        "`--tx-strategy auto` copies the payload into the TX frame, which the NIC then reads in "
        "place; in copy mode the kernel copies that frame once more into an skb.\n"
    )
    with open(a.out, "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
