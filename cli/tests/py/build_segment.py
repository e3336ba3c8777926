#!/usr/bin/env python3
"""Build a partition segment with kafka-python's DefaultRecordBatchBuilder.

usage: build_segment.py LOG_DIR TOPIC PARTITION BASE_OFFSET BATCHES

Writes LOG_DIR/TOPIC-PARTITION/<20-digit BASE_OFFSET>.log with BATCHES batches of 1..7
records (offsets contiguous except for one gap, as compaction leaves; one gzip batch), mixed
null/non-null keys and values, headers, timestamps not sorted within a batch.
Prints one line per batch, "batch BASE LAST CODEC POSITION SIZE", and per record of
uncompressed batches "record OFFSET TIMESTAMP KEYHEX|- VALUEHEX|- HEADERS" (HEADERS:
k=hex,k=hex or -).
"""
import os
import random
import struct
import sys

from kafka.record.default_records import DefaultRecordBatchBuilder


def hx(b):
    return "-" if b is None else (b.hex() or "=")


def main():
    log_dir, topic, partition, base, n_batches = sys.argv[1:6]
    partition, base, n_batches = int(partition), int(base), int(n_batches)
    rng = random.Random(7)
    pdir = os.path.join(log_dir, "%s-%d" % (topic, partition))
    os.makedirs(pdir, exist_ok=True)
    out = bytearray()
    offset = base
    ts0 = 1_700_000_000_000
    lines = []
    for i in range(n_batches):
        codec = 1 if i == n_batches // 2 else 0
        b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                      producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                      batch_size=1 << 20)
        recs = []
        for j in range(rng.randint(1, 7)):
            ts = ts0 + i * 100 + rng.randint(-20, 20)
            key = None if rng.random() < 0.3 else ("k%d" % (offset + j)).encode()
            value = None if rng.random() < 0.1 else bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
            if codec:
                value = b"compressible " * 20  # kafka-python sends uncompressed if gzip does not help
            headers = [("hdr%d" % h, None if h == 1 else b"v%d" % h) for h in range(rng.randint(0, 3))]
            if b.append(j, timestamp=ts, key=key, value=value, headers=headers) is None:
                raise SystemExit("batch full")
            recs.append((offset + j, ts, key, value, headers))
        buf = bytearray(b.build())
        # The producer leaves the base offset 0; the broker assigns it (not covered by the CRC).
        buf[0:8] = struct.pack(">q", offset)
        codec = buf[22] & 0x07
        if i == n_batches // 2 and codec != 1:
            raise SystemExit("expected a gzip batch")
        lines.append("batch %d %d %d %d %d" % (offset, offset + len(recs) - 1, codec, len(out), len(buf)))
        if codec == 0:
            for (o, ts, key, value, headers) in recs:
                h = ",".join("%s=%s" % (k, hx(v)) for k, v in headers) or "-"
                lines.append("record %d %d %s %s %s" % (o, ts, hx(key), hx(value), h))
        out += buf
        offset += len(recs)
        if i == 2:
            offset += 5  # a gap, as compaction leaves
    with open(os.path.join(pdir, "%020d.log" % base), "wb") as f:
        f.write(out)
    print("\n".join(lines))


main()
