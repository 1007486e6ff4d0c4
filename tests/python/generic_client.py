"""A generic gRPC client from outside driftwatch (grpcio, PyPI) checks the
collector's health and discovers its services through server reflection.

Usage: generic_client.py HOST:PORT
Prints one line per finding; exits non-zero on any failure.
"""

import sys

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(target: str) -> None:
    channel = grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "driftwatch.v1.AgentService", "driftwatch.v1.FleetService"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"health {service or '(server)'} {status}")

    database = ProtoReflectionDescriptorDatabase(channel)
    for name in sorted(database.get_services()):
        print(f"service {name}")
    pool = descriptor_pool.DescriptorPool(database)
    for name in ["driftwatch.v1.AgentService", "driftwatch.v1.FleetService"]:
        service = pool.FindServiceByName(name)
        for method in service.methods:
            print(f"method {name}/{method.name} {method.input_type.full_name}")


if __name__ == "__main__":
    main(sys.argv[1])
