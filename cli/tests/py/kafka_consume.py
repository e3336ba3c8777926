#!/usr/bin/env python3
"""Consume one partition from a Kafka-protocol broker with kafka-python, assigned (no group).

usage: kafka_consume.py BOOTSTRAP TOPIC PARTITION COUNT TIMEOUT_S

Starts at the beginning of the partition and prints one line per record,
"OFFSET<TAB>KEY<TAB>VALUE" (key and value as text), until COUNT records were received,
then "done COUNT". Exits 1 with "FAIL reason" if TIMEOUT_S passes first.
"""
from kafka import KafkaConsumer, TopicPartition

import record_lines


def main():
    bootstrap, topic, partition, count, timeout_s = record_lines.args()
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

    def poll():
        batches = consumer.poll(timeout_ms=500, max_records=10000)
        for records in batches.values():
            for r in records:
                yield r.offset, r.key, r.value

    got = record_lines.print_records(poll, count, timeout_s)
    consumer.close()
    record_lines.finish(got, count, timeout_s)


if __name__ == "__main__":
    main()
