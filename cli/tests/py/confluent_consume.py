#!/usr/bin/env python3
"""Consume one partition with confluent-kafka (librdkafka), assigned from the beginning.

usage: confluent_consume.py BOOTSTRAP TOPIC PARTITION COUNT TIMEOUT_S

Same output as kafka_consume.py: "OFFSET<TAB>KEY<TAB>VALUE" per record, then "done COUNT";
"FAIL reason" and exit 1 when TIMEOUT_S passes first or the client reports an error.
"""
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

import record_lines


def main():
    bootstrap, topic, partition, count, timeout_s = record_lines.args()
    # group.id is required by the client; assign() never joins the group, nothing is committed.
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "kxgw-test",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])

    def poll():
        for m in consumer.consume(num_messages=10000, timeout=0.5):
            if m.error():
                record_lines.fail("client error: %s" % m.error())
            yield m.offset(), m.key(), m.value()

    got = record_lines.print_records(poll, count, timeout_s)
    consumer.close()
    record_lines.finish(got, count, timeout_s)


if __name__ == "__main__":
    main()
