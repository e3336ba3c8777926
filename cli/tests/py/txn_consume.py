#!/usr/bin/env python3
"""Consume one partition with a stock client at an isolation level, assigned from offset 0.

usage: txn_consume.py CLIENT BOOTSTRAP TOPIC PARTITION ISOLATION COUNT TIMEOUT_S IDLE_S

CLIENT: confluent (confluent-kafka / librdkafka) or kafka-python. ISOLATION:
read_committed or read_uncommitted. Prints "OFFSET<TAB>VALUE" per record until COUNT records
arrived, then keeps polling IDLE_S more seconds (records past the expected ones, e.g. past
the last stable offset, are printed too, so the caller sees them), then "done N".
Exits 1 with "FAIL reason" if COUNT records do not arrive within TIMEOUT_S.
"""
import sys
import time


def confluent(bootstrap, topic, partition, isolation):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "kxgw-txn-test",
        "enable.auto.commit": False,
        "isolation.level": isolation,
        "auto.offset.reset": "earliest",
    })
    c.assign([TopicPartition(topic, partition, 0)])

    def poll(timeout_s):
        out = []
        for m in c.consume(num_messages=10000, timeout=timeout_s):
            if m.error() is None:
                out.append((m.offset(), m.value()))
        return out

    return poll, c.close


def kafka_python(bootstrap, topic, partition, isolation):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation,
        request_timeout_ms=30000,
    )
    tp = TopicPartition(topic, partition)
    c.assign([tp])
    c.seek(tp, 0)

    def poll(timeout_s):
        out = []
        for records in c.poll(timeout_ms=int(timeout_s * 1000), max_records=10000).values():
            out.extend((r.offset, r.value) for r in records)
        return out

    return poll, c.close


def main():
    client, bootstrap, topic, partition, isolation, count, timeout_s, idle_s = sys.argv[1:9]
    partition, count = int(partition), int(count)
    timeout_s, idle_s = float(timeout_s), float(idle_s)
    make = {"confluent": confluent, "kafka-python": kafka_python}[client]
    poll, close = make(bootstrap, topic, partition, isolation)
    got = 0
    out = sys.stdout
    deadline = time.monotonic() + timeout_s
    while got < count and time.monotonic() < deadline:
        for off, value in poll(0.5):
            out.write("%d\t%s\n" % (off, (value or b"").decode()))
            got += 1
    if got < count:
        close()
        out.write("FAIL received %d of %d records in %.1f s\n" % (got, count, timeout_s))
        out.flush()
        sys.exit(1)
    idle_end = time.monotonic() + idle_s
    while time.monotonic() < idle_end:
        for off, value in poll(0.5):
            out.write("%d\t%s\n" % (off, (value or b"").decode()))
            got += 1
    close()
    out.write("done %d\n" % got)
    out.flush()


if __name__ == "__main__":
    main()
