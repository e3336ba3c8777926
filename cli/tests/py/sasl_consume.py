#!/usr/bin/env python3
"""Consume one partition over SASL with a stock client, assigned from the beginning.

usage: sasl_consume.py CLIENT BOOTSTRAP TOPIC PARTITION COUNT TIMEOUT_S MECHANISM USER PASSWORD

CLIENT is "confluent" (confluent-kafka / librdkafka) or "kafka-python". USER "-" connects
without credentials (security.protocol PLAINTEXT against the SASL port).
With KXGW_SSL_CA=FILE in the environment the connection is TLS (SSL, or SASL_SSL with
credentials) verifying the listener's certificate against FILE; KXGW_SSL_CERT and
KXGW_SSL_KEY add a client certificate.
Output as confluent_consume.py: "OFFSET<TAB>KEY<TAB>VALUE" per record, then "done COUNT";
"FAIL reason" and exit 1 when the client reports an error or TIMEOUT_S passes first.
"""
import os
import sys
import time

SSL_CA = os.environ.get("KXGW_SSL_CA")
SSL_CERT = os.environ.get("KXGW_SSL_CERT")
SSL_KEY = os.environ.get("KXGW_SSL_KEY")


def fail(msg):
    sys.stdout.write("FAIL %s\n" % msg)
    sys.stdout.flush()
    sys.exit(1)


def emit(offset, key, value):
    k = key.decode() if key is not None else ""
    v = value.decode() if value is not None else ""
    sys.stdout.write("%d\t%s\t%s\n" % (offset, k, v))


def confluent(bootstrap, topic, partition, count, timeout_s, mech, user, password):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    errors = []
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "kxgw-test",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "error_cb": lambda e: errors.append(e),
    }
    if user != "-":
        conf.update({
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mech,
            "sasl.username": user,
            "sasl.password": password,
        })
    if SSL_CA:
        conf["security.protocol"] = "SASL_SSL" if user != "-" else "SSL"
        conf["ssl.ca.location"] = SSL_CA
        if SSL_CERT:
            conf.update({"ssl.certificate.location": SSL_CERT, "ssl.key.location": SSL_KEY})
    consumer = Consumer(conf)
    # librdkafka retries an assigned partition's errors quietly: ask for the topic's metadata
    # first, as an application would, so an authorization error is reported.
    try:
        md = consumer.list_topics(topic, timeout=10)
    except Exception as e:  # KafkaException: no broker reachable or authenticated
        fail("client error: %s" % e)
    err = md.topics[topic].error if topic in md.topics else None
    if err is not None:
        fail("client error: %s" % err.name())
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < count and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=10000, timeout=0.5):
            if m.error():
                fail("client error: %s" % m.error().name())
            emit(m.offset(), m.key(), m.value())
            got += 1
        for e in errors:
            if e.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                            KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                            KafkaError._SSL):
                fail("client error: %s %s" % (e.name(), e.str()))
    consumer.close()
    return got


def kafka_python(bootstrap, topic, partition, count, timeout_s, mech, user, password):
    import logging

    # kafka-python reports a refused login only in its log (a NullHandler by default).
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    conf = dict(bootstrap_servers=bootstrap, enable_auto_commit=False,
                request_timeout_ms=5000, api_version_auto_timeout_ms=5000)
    if user != "-":
        conf.update(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mech,
                    sasl_plain_username=user, sasl_plain_password=password)
    if SSL_CA:
        conf.update(security_protocol="SASL_SSL" if user != "-" else "SSL", ssl_cafile=SSL_CA)
        if SSL_CERT:
            conf.update(ssl_certfile=SSL_CERT, ssl_keyfile=SSL_KEY)
    try:
        check_topic_kafka_python(conf, topic, timeout_s)
        consumer = KafkaConsumer(**conf)
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got = 0
        deadline = time.monotonic() + timeout_s
        while got < count and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                for r in recs:
                    emit(r.offset, r.key, r.value)
                    got += 1
        consumer.close()
    except KafkaError as e:
        fail("client error: %s %s" % (type(e).__name__, e))
    except Exception as e:  # connection refused, auth failures surface as other types too
        fail("client error: %s %s" % (type(e).__name__, e))
    return got


def check_topic_kafka_python(conf, topic, timeout_s):
    """kafka-python's consumer retries an unauthorized assigned topic quietly: track the topic's
    metadata with its client first, as an application would, and report the refusal."""
    from kafka import KafkaClient
    from kafka.errors import TopicAuthorizationFailedError

    keys = ("bootstrap_servers", "security_protocol", "sasl_mechanism",
            "sasl_plain_username", "sasl_plain_password", "request_timeout_ms",
            "ssl_cafile", "ssl_certfile", "ssl_keyfile")
    client = KafkaClient(**{k: v for k, v in conf.items() if k in keys})
    future = client.add_topic(topic)
    deadline = time.monotonic() + timeout_s
    while not future.is_done and time.monotonic() < deadline:
        client.poll(timeout_ms=200)
    unauthorized = set(client.cluster.unauthorized_topics)
    client.close()
    if topic in unauthorized:
        raise TopicAuthorizationFailedError(topic)


def main():
    client, bootstrap, topic, partition, count, timeout_s, mech, user, password = sys.argv[1:10]
    args = (bootstrap, topic, int(partition), int(count), float(timeout_s), mech, user, password)
    if client == "confluent":
        got = confluent(*args)
    elif client == "kafka-python":
        got = kafka_python(*args)
    else:
        fail("unknown client %s" % client)
    if got < int(count):
        fail("received %d of %s records in %s s" % (got, count, timeout_s))
    sys.stdout.write("done %d\n" % got)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
