"""Writes the fuzz targets' seed corpus and the saved crashers (python3 make_seeds.py,
run in fuzz/). The files are committed; this says how each one was made."""
import gzip
import os
import struct


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


FRAME = "corpus/frame"
plain = b'{"data":{"feature_0":0.1,"feature_1":0.2,"feature_2":0.3,"feature_3":0.4}}'
write(FRAME, "plain", plain)
write(FRAME, "plain-gzip", gzip.compress(plain))
write(FRAME, "id-timestamp", b'{"id":"f-1","timestamp":"2026-11-23T10:00:00.123Z","data":{"feature_0":1e-3,"feature_1":-2,"feature_2":3.5E2,"feature_3":0}}')
write(FRAME, "numeric-time", b'{"timestamp":1764000000000,"id":7,"data":{"feature_3":1,"feature_2":2,"feature_1":3,"feature_0":4}}')
write(FRAME, "seq-key", b'{"seq":12,"data":{"feature_0":0.5,"feature_1":0.5,"feature_2":0.5,"feature_3":0.5}}')
write(FRAME, "escaped-key", b'{"data":{"feature_\\u0030":1,"feature_1":2,"feature_2":3,"feature_3":4}}')
write(FRAME, "extra-nested", b'{"meta":{"a":[1,{"b":null}]},"data":{"feature_0":1,"feature_1":2,"feature_2":3,"feature_3":4}}')
write(FRAME, "missing", b'{"data":{"feature_0":1,"feature_2":3}}')
write(FRAME, "unknown", b'{"data":{"feature_0":1,"feature_1":2,"feature_2":3,"feature_3":4,"x":5}}')
write(FRAME, "string-value", b'{"data":{"feature_0":"NaN","feature_1":2,"feature_2":3,"feature_3":4}}')
write(FRAME, "big-numbers", b'{"data":{"feature_0":1e39,"feature_1":99999999999999999999999999999999999999999,"feature_2":-0.0,"feature_3":4.9e-324}}')
write(FRAME, "duplicate", b'{"data":{"feature_0":1,"feature_0":1,"feature_1":2,"feature_2":3,"feature_3":4}}')
write(FRAME, "whitespace", b' \n{ "data" : { "feature_0" : 1 , "feature_1" : 2 , "feature_2" : 3 , "feature_3" : 4 } } \n')

# The 61-byte denial of service (issue 12): nesting that overflowed the parser's stack.
write("artifacts/frame", "crash-deep-nesting-61-bytes", gzip.compress(b'{"x":' + b"[" * 18750 + b"}", 9))
write("artifacts/frame", "crash-deep-nesting-in-value", b'{"data":{"feature_0":' + b"[" * 20000)


def twf1(values, seq, event_ms, frame_id):
    """A TWF1 binary frame (src/kafka/binary.rs)."""
    idb = frame_id.encode()
    head = b"TWF1" + struct.pack("<IQqH", len(values), seq, event_ms, len(idb)) + idb
    return head + b"".join(struct.pack("<f", v) for v in values)


BINARY = "corpus/kafka_binary"
write(BINARY, "plain", twf1([0.1, 0.2, 0.3, 0.4], 1, 1764000000000, "frame-1"))
write(BINARY, "no-id-no-time", twf1([1, 2, 3, 4], 0, -(2**63), ""))
write(BINARY, "wrong-count", twf1([1, 2, 3], 5, 0, "x"))
write(BINARY, "truncated", twf1([1, 2, 3, 4], 5, 0, "x")[:-3])
write(BINARY, "trailing", twf1([1, 2, 3, 4], 5, 0, "x") + b"\0")
write(BINARY, "nan", twf1([1, float("nan"), 3, 4], 5, 0, ""))
