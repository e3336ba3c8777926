"""What kafka_consume.py and confluent_consume.py share: their arguments, one line per record
("OFFSET<TAB>KEY<TAB>VALUE", key and value as text), and how they end ("done COUNT", or
"FAIL reason" and exit 1)."""
import sys
import time


def args():
    """BOOTSTRAP TOPIC PARTITION COUNT TIMEOUT_S from the command line."""
    bootstrap, topic, partition, count, timeout_s = sys.argv[1:6]
    return bootstrap, topic, int(partition), int(count), float(timeout_s)


def fail(reason):
    sys.stdout.write("FAIL %s\n" % reason)
    sys.stdout.flush()
    sys.exit(1)


def text(b):
    return b.decode() if b is not None else ""


def print_records(poll, count, timeout_s):
    """Calls poll() for (offset, key, value) records until COUNT arrived or TIMEOUT_S passed;
    prints each; returns how many arrived."""
    got = 0
    deadline = time.monotonic() + timeout_s
    out = sys.stdout
    while got < count and time.monotonic() < deadline:
        for offset, key, value in poll():
            out.write("%d\t%s\t%s\n" % (offset, text(key), text(value)))
            got += 1
    return got


def finish(got, count, timeout_s):
    if got < count:
        fail("received %d of %d records in %.1f s" % (got, count, timeout_s))
    sys.stdout.write("done %d\n" % got)
    sys.stdout.flush()
