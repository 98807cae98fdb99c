"""Prometheus' remote-protocol messages (package `prometheus`, prompb's types.proto and remote.proto),
built at import from a descriptor with the `protobuf` package: its runtime does the wire format, so
there is no generated code to keep in step with a protobuf version, and no codec of our own.

Only the messages and fields perfwatch reads or writes are declared, with prompb's field numbers;
a field not declared here (exemplars, a future addition) is skipped by the parser as unknown.
Native histograms (TimeSeries field 4) are declared as raw bytes: the receiver counts and drops
them without decoding (the archive stores floats only).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "prometheus"
_FILE = "perfwatch_prompb.proto"

# message → its fields (name, number, type, label, message or enum type name or None), as in prompb.
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MESSAGES: dict[str, list[tuple[str, int, int, int, str | None]]] = {
    "Sample": [("value", 1, _F.TYPE_DOUBLE, _OPTIONAL, None), ("timestamp", 2, _F.TYPE_INT64, _OPTIONAL, None)],
    "Label": [("name", 1, _F.TYPE_STRING, _OPTIONAL, None), ("value", 2, _F.TYPE_STRING, _OPTIONAL, None)],
    "TimeSeries": [("labels", 1, _F.TYPE_MESSAGE, _REPEATED, "Label"),
                   ("samples", 2, _F.TYPE_MESSAGE, _REPEATED, "Sample"),
                   ("histograms", 4, _F.TYPE_BYTES, _REPEATED, None)],
    "MetricMetadata": [("type", 1, _F.TYPE_ENUM, _OPTIONAL, "MetricMetadata.MetricType"),
                       ("metric_family_name", 2, _F.TYPE_STRING, _OPTIONAL, None),
                       ("help", 4, _F.TYPE_STRING, _OPTIONAL, None),
                       ("unit", 5, _F.TYPE_STRING, _OPTIONAL, None)],
    "WriteRequest": [("timeseries", 1, _F.TYPE_MESSAGE, _REPEATED, "TimeSeries"),
                     ("metadata", 3, _F.TYPE_MESSAGE, _REPEATED, "MetricMetadata")],
    "LabelMatcher": [("type", 1, _F.TYPE_ENUM, _OPTIONAL, "LabelMatcher.Type"),
                     ("name", 2, _F.TYPE_STRING, _OPTIONAL, None),
                     ("value", 3, _F.TYPE_STRING, _OPTIONAL, None)],
    "ReadHints": [("step_ms", 1, _F.TYPE_INT64, _OPTIONAL, None), ("func", 2, _F.TYPE_STRING, _OPTIONAL, None),
                  ("start_ms", 3, _F.TYPE_INT64, _OPTIONAL, None), ("end_ms", 4, _F.TYPE_INT64, _OPTIONAL, None),
                  ("grouping", 5, _F.TYPE_STRING, _REPEATED, None), ("by", 6, _F.TYPE_BOOL, _OPTIONAL, None),
                  ("range_ms", 7, _F.TYPE_INT64, _OPTIONAL, None)],
    "Query": [("start_timestamp_ms", 1, _F.TYPE_INT64, _OPTIONAL, None),
              ("end_timestamp_ms", 2, _F.TYPE_INT64, _OPTIONAL, None),
              ("matchers", 3, _F.TYPE_MESSAGE, _REPEATED, "LabelMatcher"),
              ("hints", 4, _F.TYPE_MESSAGE, _OPTIONAL, "ReadHints")],
    "ReadRequest": [("queries", 1, _F.TYPE_MESSAGE, _REPEATED, "Query"),
                    ("accepted_response_types", 2, _F.TYPE_ENUM, _REPEATED, "ReadRequest.ResponseType")],
    "QueryResult": [("timeseries", 1, _F.TYPE_MESSAGE, _REPEATED, "TimeSeries")],
    "ReadResponse": [("results", 1, _F.TYPE_MESSAGE, _REPEATED, "QueryResult")],
}
# Enums nested in a message: message → (enum name, its values).
_ENUMS: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "MetricMetadata": ("MetricType", [("UNKNOWN", 0), ("COUNTER", 1), ("GAUGE", 2), ("HISTOGRAM", 3),
                                      ("GAUGEHISTOGRAM", 4), ("SUMMARY", 5), ("INFO", 6), ("STATESET", 7)]),
    "LabelMatcher": ("Type", [("EQ", 0), ("NEQ", 1), ("RE", 2), ("NRE", 3)]),
    "ReadRequest": ("ResponseType", [("SAMPLES", 0), ("STREAMED_XOR_CHUNKS", 1)]),
}


def _build() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(name=_FILE, package=_PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        if name in _ENUMS:
            enum_name, values = _ENUMS[name]
            enum = message.enum_type.add(name=enum_name)
            for value_name, number in values:
                enum.value.add(name=value_name, number=number)
        for field_name, number, kind, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name is not None:
                field.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _MESSAGES}


_CLASSES = _build()
Sample: Any = _CLASSES["Sample"]
Label: Any = _CLASSES["Label"]
TimeSeries: Any = _CLASSES["TimeSeries"]
MetricMetadata: Any = _CLASSES["MetricMetadata"]
WriteRequest: Any = _CLASSES["WriteRequest"]
LabelMatcher: Any = _CLASSES["LabelMatcher"]
ReadHints: Any = _CLASSES["ReadHints"]
Query: Any = _CLASSES["Query"]
ReadRequest: Any = _CLASSES["ReadRequest"]
QueryResult: Any = _CLASSES["QueryResult"]
ReadResponse: Any = _CLASSES["ReadResponse"]

# LabelMatcher.Type and MetricMetadata.MetricType by number.
MATCHER_OPS = {0: "=", 1: "!=", 2: "=~", 3: "!~"}
METRIC_TYPES = dict(enumerate(("unknown", "counter", "gauge", "histogram", "gaugehistogram", "summary", "info",
                               "stateset")))
SAMPLES_RESPONSE = 0  # ReadRequest.ResponseType.SAMPLES
