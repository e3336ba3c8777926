#!/usr/bin/env python3
"""Consume one partition with confluent-kafka (librdkafka), assigned from the beginning.

usage: confluent_consume.py BOOTSTRAP TOPIC PARTITION COUNT TIMEOUT_S

Same output as kafka_consume.py: "OFFSET<TAB>KEY<TAB>VALUE" per record, then "done COUNT";
"FAIL reason" and exit 1 when TIMEOUT_S passes first or the client reports an error.
"""
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def main():
    bootstrap, topic, partition, count, timeout_s = sys.argv[1:6]
    partition, count, timeout_s = int(partition), int(count), float(timeout_s)
    # group.id is required by the client; assign() never joins the group, nothing is committed.
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "kxgw-test",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    got = 0
    deadline = time.monotonic() + timeout_s
    out = sys.stdout
    while got < count and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=10000, timeout=0.5):
            if m.error():
                out.write("FAIL client error: %s\n" % m.error())
                out.flush()
                sys.exit(1)
            key = m.key().decode() if m.key() is not None else ""
            value = m.value().decode() if m.value() is not None else ""
            out.write("%d\t%s\t%s\n" % (m.offset(), key, value))
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
