#!/usr/bin/env python3
"""Commit and fetch group offsets over SASL_PLAINTEXT with confluent-kafka (librdkafka).

usage: sasl_commit.py BOOTSTRAP GROUP MECHANISM USER PASSWORD TOPIC:OFFSET...

For each TOPIC:OFFSET, commits OFFSET on partition 0 of TOPIC (synchronously, without
joining the group), then reads each back. Output, one line per topic and step:
"commit TOPIC RESULT" then "committed TOPIC RESULT", RESULT being "OK", the committed offset,
or the name of the error the client reports (e.g. TOPIC_AUTHORIZATION_FAILED).
"""
import sys

from confluent_kafka import Consumer, KafkaException, TopicPartition


def error_name(e):
    err = e.args[0] if e.args else None
    return err.name() if hasattr(err, "name") else str(e)


def commit(consumer, topic, offset):
    try:
        res = consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    except KafkaException as e:
        return error_name(e)
    errs = [tp.error.name() for tp in res or [] if tp.error]
    return errs[0] if errs else "OK"


def committed(consumer, topic):
    try:
        res = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    except KafkaException as e:
        return error_name(e)
    tp = res[0]
    return tp.error.name() if tp.error else str(tp.offset)


def main():
    bootstrap, group, mech, user, password = sys.argv[1:6]
    wanted = [(t, int(o)) for t, o in (a.rsplit(":", 1) for a in sys.argv[6:])]
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mech,
        "sasl.username": user,
        "sasl.password": password,
    })
    for topic, offset in wanted:
        print("commit %s %s" % (topic, commit(consumer, topic, offset)), flush=True)
    for topic, _ in wanted:
        print("committed %s %s" % (topic, committed(consumer, topic)), flush=True)
    consumer.close()


if __name__ == "__main__":
    main()
