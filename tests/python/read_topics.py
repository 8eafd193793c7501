#!/usr/bin/env python3
"""Read Nectar topics with Confluent's official Python client and print them as JSON.

This is deliberately *not* Nectar code: it is what a third-party consumer would run.
Values are decoded by confluent_kafka's AvroDeserializer (Confluent wire format:
magic byte 0, 4-byte big-endian schema id, Avro binary body) using the writer schema
fetched from the Schema Registry by id; keys are plain UTF-8 strings.

    read_topics.py --bootstrap 127.0.0.1:9092 \
        --registry http://127.0.0.1:8081/apis/ccompat/v7 \
        --topic T [--topic T2 ...] --expect N [--timeout 30]

stdout: exactly one JSON document, a list (sorted by topic, partition, offset) of
    {"topic": str, "partition": int, "offset": int, "key": str|null, "value": ...}
  where the decoded Avro value is made JSON-safe: bytes/fixed -> base64 string,
  timestamp-*/date/time logical types (which fastavro returns as datetime objects)
  -> ISO 8601 strings (or epoch millis with --timestamps epoch-millis),
  decimal -> string, uuid -> string, NaN/Infinity -> "NaN"/"Infinity"/"-Infinity".
  The list holds whatever was read, also on failure.
exit: 0 if exactly N records were read (the consumer reads every partition of every
  topic to its end, so surplus records are noticed), 1 otherwise, with the reason on
  stderr (missing topic, decode error, too few/many records, timeout).

Consumer: isolation.level=read_committed, a random group id, auto.offset.reset=earliest,
no offset commits. Partitions are assign()ed explicitly from the beginning rather than
subscribe()d, which skips the group join/rebalance (~3 s on a fresh group) and lets
the tool know when every partition has been read to its end (partition EOF, which
under read_committed is the last stable offset).
"""

import argparse
import base64
import datetime
import decimal
import json
import math
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, DeserializingConsumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.error import ConsumeError, KeyDeserializationError, ValueDeserializationError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def log(msg):
    print("[read_topics] %s" % msg, file=sys.stderr, flush=True)


def json_safe(value, timestamps="iso"):
    """Convert a fastavro-decoded value into something json.dumps accepts losslessly."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_safe(v, timestamps) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        # tuples only appear with return_record_name=True (not used): keep them as lists
        return [json_safe(v, timestamps) for v in value]
    if isinstance(value, datetime.datetime):
        if timestamps == "epoch-millis":
            aware = value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)
            return (aware - _EPOCH) // datetime.timedelta(milliseconds=1)
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError("cannot make %s JSON-safe: %r" % (type(value).__name__, value))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:9092")
    p.add_argument(
        "--registry",
        required=True,
        help="Schema Registry URL incl. any base path, e.g. http://127.0.0.1:8081/apis/ccompat/v7",
    )
    p.add_argument("--topic", action="append", required=True, help="topic to read (repeatable)")
    p.add_argument("--expect", type=int, required=True, help="number of records expected in total")
    p.add_argument("--timeout", type=float, default=30.0, help="overall timeout in seconds (default 30)")
    p.add_argument(
        "--timestamps",
        choices=("iso", "epoch-millis"),
        default="iso",
        help="how to render timestamp logical types (default iso)",
    )
    p.add_argument("--group-id", default=None, help="consumer group id (default: random)")
    args = p.parse_args(argv)
    if args.expect < 0:
        p.error("--expect must be >= 0")
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    args.topic = list(dict.fromkeys(args.topic))  # de-duplicate, keep order
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    deadline = time.monotonic() + args.timeout

    records = []
    error = None

    # A per-request timeout: the client has none by default and once waited forever on an
    # answer the registry never sent; a timed-out request is retried (max.retries).
    registry = SchemaRegistryClient({"url": args.registry, "timeout": 10})
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group_id or "nectar-read-topics-%s" % uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "key.deserializer": StringDeserializer("utf_8"),
            # No reader schema: decode with the writer schema looked up by the id in the
            # message. The subject name strategy is left at the library default.
            "value.deserializer": AvroDeserializer(registry),
        }
    )
    try:
        # Every partition of every topic: also proves the topics exist.
        partitions = []
        for topic in args.topic:
            remaining = max(0.1, deadline - time.monotonic())
            md = consumer.list_topics(topic, timeout=remaining)
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                why = tmd.error if tmd is not None and tmd.error is not None else "no partitions"
                raise RuntimeError("topic %r is not readable: %s" % (topic, why))
            partitions.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(tmd.partitions))
        consumer.assign(partitions)
        at_end = {(tp.topic, tp.partition): False for tp in partitions}
        log(
            "reading %d partition(s) of %s, expecting %d record(s)"
            % (len(partitions), ", ".join(args.topic), args.expect)
        )

        while True:
            if len(records) >= args.expect and all(at_end.values()):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pending = sorted("%s[%d]" % tp for tp, done in at_end.items() if not done)
                error = "timed out after %gs with %d of %d record(s)%s" % (
                    args.timeout,
                    len(records),
                    args.expect,
                    ("; not at end of " + ", ".join(pending)) if pending else "",
                )
                break
            try:
                msg = consumer.poll(min(remaining, 0.5))
            except ConsumeError as e:
                if e.code == KafkaError._PARTITION_EOF:
                    m = e.kafka_message
                    at_end[(m.topic(), m.partition())] = True
                    continue
                raise
            if msg is None:
                continue
            at_end[(msg.topic(), msg.partition())] = False
            records.append(
                {
                    "topic": msg.topic(),
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "key": msg.key(),
                    "value": json_safe(msg.value(), args.timestamps),
                }
            )
    except (KeyDeserializationError, ValueDeserializationError) as e:
        m = e.kafka_message
        where = "%s[%d]@%d" % (m.topic(), m.partition(), m.offset()) if m is not None else "?"
        error = "could not decode the %s of %s: %s" % (
            "key" if isinstance(e, KeyDeserializationError) else "value",
            where,
            e,
        )
    except (KafkaException, ConsumeError, RuntimeError, TypeError) as e:
        error = str(e)
    finally:
        consumer.close()

    records.sort(key=lambda r: (r["topic"], r["partition"], r["offset"]))
    json.dump(records, sys.stdout, ensure_ascii=False, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()

    if error is None and len(records) != args.expect:
        error = "read %d record(s), expected exactly %d" % (len(records), args.expect)
    if error is not None:
        log("FAIL: " + error)
        return 1
    log("OK: read exactly %d record(s)" % len(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
