"""The standard gRPC health check (grpc.health.v1.Health/Check), as Kubernetes' gRPC probe
makes it, with nothing but grpcio: the two one-field messages are encoded by hand.

    python scripts/grpc_health.py HOST:PORT [SERVICE] [--timeout SECONDS]

prints the answer (SERVING, NOT_SERVING, ..., or the gRPC status code of a refusal such as
NOT_FOUND for a service the server does not know) and exits 0 only on SERVING. SERVICE defaults
to "", the server as a whole. tests/e2e/k8s.rs and tests/e2e/nginx.rs run it.
"""

import argparse
import sys

import grpc

METHOD = "/grpc.health.v1.Health/Check"
# HealthCheckResponse.ServingStatus
STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data, at):
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def encode_request(service):
    """HealthCheckRequest { string service = 1; }: nothing at all for the empty default."""
    raw = service.encode("utf-8")
    return b"\x0a" + varint(len(raw)) + raw if raw else b""


def decode_response(data):
    """HealthCheckResponse { ServingStatus status = 1; }: other fields are skipped."""
    status, at = 0, 0
    while at < len(data):
        key, at = read_varint(data, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(data, at)
            if field == 1:
                status = value
        elif wire == 1:
            at += 8
        elif wire == 2:
            length, at = read_varint(data, at)
            at += length
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"wire type {wire} in a HealthCheckResponse")
        if at > len(data):
            raise ValueError("a truncated HealthCheckResponse")
    return status


def check(target, service, timeout):
    """The answer's name: a ServingStatus, or the status code the call failed with."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=encode_request, response_deserializer=decode_response
        )
        try:
            status = call(service, timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name, e.details()
    return STATUSES.get(status, f"status {status}"), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="HOST:PORT of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help='the service to ask about ("": the server)')
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    args = parser.parse_args()
    name, details = check(args.target, args.service, args.timeout)
    print(name)
    if details:
        print(details, file=sys.stderr)
    sys.exit(0 if name == "SERVING" else 1)


if __name__ == "__main__":
    main()
