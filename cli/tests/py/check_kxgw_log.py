#!/usr/bin/env python3
"""Decode and CRC-check, with kafka-python, the segments `kxgw produce` wrote for one partition.

usage: check_kxgw_log.py PARTITION_DIR PARTITION RECORDS KEY_SIZE RECORD_SIZE HEADERS

Checks every batch (CRC, magic 2, no compression, producer id -1, contiguous offsets from 0)
and every record (offset, demo key, demo value, headers) against kxgw's demo content rules.
Prints "ok BATCHES RECORDS SEGMENTS" on success, exits 1 with a reason otherwise.
"""
import os
import struct
import sys

from kafka.record.default_records import DefaultRecordBatch


def demo_key(offset, size):
    k = b"key-%012d" % offset
    return (k + b"k" * size)[:size]


def demo_value(partition, offset, size):
    prefix = b"p%d-o%012d-" % (partition, offset)
    out = bytearray(prefix[:size])
    for i in range(len(out), size):
        out.append(ord("a") + (offset + i) % 26)
    return bytes(out)


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def main():
    pdir, partition, records, key_size, record_size, headers = sys.argv[1:7]
    partition, records, key_size = int(partition), int(records), int(key_size)
    record_size, headers = int(record_size), int(headers)
    segs = sorted(f for f in os.listdir(pdir) if f.endswith(".log"))
    expect = 0
    batches = 0
    for seg in segs:
        base = int(seg[:-4])
        if base != expect:
            fail("%s: segment base %d, expected %d" % (seg, base, expect))
        data = open(os.path.join(pdir, seg), "rb").read()
        pos = 0
        while pos < len(data):
            _, length = struct.unpack(">qi", data[pos:pos + 12])
            b = DefaultRecordBatch(bytes(data[pos:pos + 12 + length]))
            where = "%s@%d" % (seg, pos)
            if not b.validate_crc():
                fail(where + ": CRC")
            if b.magic != 2 or b.compression_type != 0 or b.producer_id != -1:
                fail(where + ": header %r" % ((b.magic, b.compression_type, b.producer_id),))
            if b.base_offset != expect:
                fail(where + ": base offset %d, expected %d" % (b.base_offset, expect))
            n = 0
            for r in b:
                if r.offset != expect:
                    fail(where + ": record offset %d, expected %d" % (r.offset, expect))
                want_key = demo_key(expect, key_size) if key_size else None
                if r.key != want_key:
                    fail(where + ": key %r at %d" % (r.key, expect))
                if r.value != demo_value(partition, expect, record_size):
                    fail(where + ": value at %d" % expect)
                want_h = [("h%d" % i, str(expect).encode()) for i in range(headers)]
                if list(r.headers) != want_h:
                    fail(where + ": headers %r at %d" % (r.headers, expect))
                expect += 1
                n += 1
            if n != b.records_count or b.last_offset != expect - 1:
                fail(where + ": count %d/%d" % (n, b.records_count))
            batches += 1
            pos += 12 + length
    if expect != records:
        fail("%d records, expected %d" % (expect, records))
    print("ok %d %d %d" % (batches, expect, len(segs)))


main()
