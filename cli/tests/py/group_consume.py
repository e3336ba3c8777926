#!/usr/bin/env python3
"""One member of a consumer group, with kafka-python or confluent-kafka (subscribe, auto-commit).

usage: group_consume.py CLIENT BOOTSTRAP GROUP TOPIC [--max N] [--pace RECORDS_PER_S]
                        [--strategy ASSIGNORS]

CLIENT is "kafka-python" or "confluent". Prints "PARTITION<TAB>OFFSET" per record received
and "assigned P,P..." on every assignment. Without --max it runs until SIGTERM, then closes
the consumer (which commits and leaves the group). With --max it stops after N records,
commits them synchronously, closes and prints "committed N". --pace slows it down to about
that many records a second (so a test can act while the group is mid-way). --strategy sets
confluent-kafka's partition.assignment.strategy (e.g. cooperative-sticky); with it every
assignment change prints "assigned +P,P" (added) or "revoked -P,P" (taken away).
"""
import argparse
import signal
import sys
import time

stop = False


def on_term(_sig, _frame):
    global stop
    stop = True


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pace(rate, started, got):
    """Sleeps until `got` records are not ahead of `rate` per second since `started`."""
    if rate:
        ahead = got / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


def kafka_python(bootstrap, group, topic, limit, rate):
    from kafka import KafkaConsumer
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            out("assigned " + ",".join(str(tp.partition) for tp in sorted(assigned)))

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        request_timeout_ms=30000,
    )
    c.subscribe([topic], listener=Listener())
    got = 0
    started = time.monotonic()
    batch = 500 if rate else 10000
    while not stop and (limit is None or got < limit):
        pace(rate, started, got)
        want = batch if limit is None else min(batch, limit - got)
        for tp, records in c.poll(timeout_ms=200, max_records=want).items():
            lines = ["%d\t%d" % (tp.partition, r.offset) for r in records]
            got += len(lines)
            sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    if limit is not None:
        c.commit()
        out("committed %d" % got)
    c.close()


def confluent(bootstrap, group, topic, limit, rate, strategy):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    }
    if strategy:
        conf["partition.assignment.strategy"] = strategy
    c = Consumer(conf)

    def names(parts):
        return ",".join(str(p.partition) for p in sorted(parts, key=lambda p: p.partition))

    def on_assign(_consumer, parts):
        out(("assigned +" if strategy else "assigned ") + names(parts))

    def on_revoke(_consumer, parts):
        out("revoked -" + names(parts))

    # The eager tests keep the client's default revoke handling.
    extra = {"on_revoke": on_revoke} if strategy else {}
    c.subscribe([topic], on_assign=on_assign, **extra)
    got = 0
    started = time.monotonic()
    batch = 500 if rate else 10000
    while not stop and (limit is None or got < limit):
        pace(rate, started, got)
        want = batch if limit is None else min(batch, limit - got)
        msgs = c.consume(num_messages=want, timeout=0.2)
        lines = []
        for m in msgs:
            if m.error():
                continue
            lines.append("%d\t%d" % (m.partition(), m.offset()))
        got += len(lines)
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
    if limit is not None:
        c.commit(asynchronous=False)
        out("committed %d" % got)
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("client", choices=["kafka-python", "confluent"])
    ap.add_argument("bootstrap")
    ap.add_argument("group")
    ap.add_argument("topic")
    ap.add_argument("--max", type=int)
    ap.add_argument("--pace", type=float, default=0)
    ap.add_argument("--strategy")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    if a.client == "kafka-python":
        kafka_python(a.bootstrap, a.group, a.topic, a.max, a.pace)
    else:
        confluent(a.bootstrap, a.group, a.topic, a.max, a.pace, a.strategy)


if __name__ == "__main__":
    main()
