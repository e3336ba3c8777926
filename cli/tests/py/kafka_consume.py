#!/usr/bin/env python3
"""Consume one partition from a Kafka-protocol broker with kafka-python, assigned (no group).

usage: kafka_consume.py BOOTSTRAP TOPIC PARTITION COUNT TIMEOUT_S

Starts at the beginning of the partition and prints one line per record,
"OFFSET<TAB>KEY<TAB>VALUE" (key and value as text), until COUNT records were received,
then "done COUNT". Exits 1 with "FAIL reason" if TIMEOUT_S passes first.
"""
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def main():
    bootstrap, topic, partition, count, timeout_s = sys.argv[1:6]
    partition, count, timeout_s = int(partition), int(count), float(timeout_s)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
        request_timeout_ms=30000,
    )
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = 0
    deadline = time.monotonic() + timeout_s
    out = sys.stdout
    while got < count and time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=500, max_records=10000)
        for records in batches.values():
            for r in records:
                key = r.key.decode() if r.key is not None else ""
                value = r.value.decode() if r.value is not None else ""
                out.write("%d\t%s\t%s\n" % (r.offset, key, value))
                got += 1
    consumer.close()
    if got < count:
        out.write("FAIL received %d of %d records in %.1f s\n" % (got, count, timeout_s))
        out.flush()
        sys.exit(1)
    out.write("done %d\n" % got)
    out.flush()


if __name__ == "__main__":
    main()
