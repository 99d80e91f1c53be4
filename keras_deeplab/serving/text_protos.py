"""TF Serving's text-format configuration messages that the tensorflow-serving-api wheel does not ship.

The message classes are built at import from descriptors with the real protos' package, names and field numbers
(tensorflow/serving: tensorflow_serving/config/monitoring_config.proto and
tensorflow_serving/servables/tensorflow/session_bundle_config.proto), in a private descriptor pool so that they
cannot clash with classes another library registers. Parsing is protobuf's own `text_format`, so a misspelt or
unknown field is refused with the line and the field's name, as TF Serving refuses it.
"""
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto


def build_message_classes(file_name, package, messages, dependencies=()):
    """Message classes {name: class} for `messages` ({name: [(field, number, type, repeated), ...]}) in `package`.

    `type` is a FieldDescriptorProto.Type for scalars or a fully qualified message name (".pkg.Message");
    `dependencies` are the generated modules (`*_pb2`) of the files that define the messages referred to.
    """
    pool = descriptor_pool.DescriptorPool()
    for module in dependencies:
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3",
                                               dependency=[module.DESCRIPTOR.name for module in dependencies])
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, repeated in fields:
            field = message.field.add(name=field_name, number=number,
                                      label=_FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL)
            if isinstance(kind, str):
                field.type, field.type_name = _FIELD.TYPE_MESSAGE, kind
            else:
                field.type = kind
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in messages}


MONITORING_CONFIG = build_message_classes("tensorflow_serving/config/monitoring_config.proto", "tensorflow.serving", {
    "PrometheusConfig": [("enable", 1, _FIELD.TYPE_BOOL, False), ("path", 2, _FIELD.TYPE_STRING, False)],
    "MonitoringConfig": [("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig", False)],
})["MonitoringConfig"]

BATCHING_PARAMETERS = build_message_classes(
    "tensorflow_serving/servables/tensorflow/session_bundle_config.proto", "tensorflow.serving", {
        "BatchingParameters": [
            ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
            ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
            ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
            ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
            ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
            ("allowed_batch_sizes", 6, _FIELD.TYPE_INT64, True),
            ("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL, False),
        ],
    }, dependencies=[wrappers_pb2])["BatchingParameters"]


def parse_text_proto(path, message_class, what):
    """The `message_class` message in the text-format file `path`; ValueError naming the file (a `what`) and the
    problem when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read the {what} file {path}: {error}") from None
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as error:
        raise ValueError(f"Invalid {what} file {path}: {error}") from None
