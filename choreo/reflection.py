"""gRPC server reflection in both versions: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only v1alpha (grpc/grpc#38576), while newer clients ask for v1 first
and some (gRPC-Java's, Go's tonic servers' clients) only for v1. The two versions are the same
schema in different packages: grpc-proto's ``grpc/reflection/v1/reflection.proto`` has
v1alpha's messages with the same fields and numbers. So the v1 file is derived from v1alpha's
descriptor (renamed, nothing else changed), added to the default pool so that v1 can be
described like any service, and the same servicer answers on both service names.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA, _V1 = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."


def _renamed(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        if field.HasField("type_name"):  # messages and enums only; scalars have none
            field.type_name = field.type_name.replace(_V1ALPHA, _V1)
    for nested in message.nested_type:
        _renamed(nested)


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = _V1_FILE, "grpc.reflection.v1"
    file.ClearField("options")  # v1alpha's language options name v1alpha packages
    for message in file.message_type:
        _renamed(message)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_V1ALPHA, _V1)
            method.output_type = method.output_type.replace(_V1ALPHA, _V1)
    pool.AddSerializedFile(file.SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha for ``service_names`` (and for reflection itself)."""
    _register_v1_descriptor()
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # Same bytes on the wire, so v1alpha's message classes decode and encode v1's.
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )
