#!/usr/bin/env python3
"""Describe topics with kafka-python's admin client, as an operator would.

usage: describe_topics.py BOOTSTRAP MECHANISM USER PASSWORD TOPIC...

kafka-python asks Metadata v8 with the cluster's and the topics' authorized operations and
decodes them as ACL operations (it fails on bits that are none). Prints
"TOPIC<TAB>ERROR_CODE<TAB>OPERATIONS" per topic (operations comma-separated, sorted).
"""
import sys

from kafka import KafkaAdminClient


def main():
    bootstrap, mech, user, password = sys.argv[1:5]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism=mech, sasl_plain_username=user,
                             sasl_plain_password=password, request_timeout_ms=10000)
    for t in admin.describe_topics(sys.argv[5:]):
        ops = ",".join(sorted(t.get("authorized_operations", [])))
        sys.stdout.write("%s\t%d\t%s\n" % (t["topic"], t["error_code"], ops))
    admin.close()


if __name__ == "__main__":
    main()
