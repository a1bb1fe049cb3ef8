"""A minimal OpenTelemetry trace receiver for the end-to-end tests.

Usage: python tests/otlp_receiver.py OUT_FILE

(OUT_FILE ``-``: spans are only counted, and the count printed at exit; for
scripts/trace_bench.sh, where the receiver stands for a collector on another machine.)

It listens on 127.0.0.1 at two ports the OS picks:

* OTLP/HTTP: ``POST /v1/traces`` with ``Content-Type: application/x-protobuf`` (optionally
  ``Content-Encoding: gzip``), answered 200 with an empty ``ExportTraceServiceResponse``;
  any other path gets 404.
* OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

Once both listen it prints one JSON line to stdout,
``{"http": "http://127.0.0.1:PORT", "grpc": "http://127.0.0.1:PORT"}``, which tests/e2e reads
to point the server's OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT and friends) at it.

Every export request appends JSON lines to OUT_FILE: first
``{"export": "http"|"grpc", "headers": {...}, "spans": N}`` (header names lower-case; for gRPC
the invocation metadata), then one line per span with its transport, resource attributes,
instrumentation scope name, ids (lower-case hex), name, kind, times, attributes, events, links
and status. The test reads OUT_FILE back once the server has flushed its spans.

It runs until SIGTERM, SIGINT or end of file on stdin, so the test should give it a piped
stdin and keep it open: when the test process ends, the pipe closes and the receiver exits.
"""

import gzip
import json
import os
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

SPAN_KIND = trace_pb2.Span.SpanKind
STATUS_CODE = trace_pb2.Status.StatusCode


def any_value(value):
    """An OTLP AnyValue as a JSON-friendly Python value (bytes as hex, none as None)."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return None if which is None else getattr(value, which)


def attributes(key_values):
    return {kv.key: any_value(kv.value) for kv in key_values}


def span_record(transport, resource, scope, span):
    return {
        "transport": transport,
        "resource": resource,
        "scope": scope,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "trace_state": span.trace_state,
        "name": span.name,
        "kind": SPAN_KIND.Name(span.kind).removeprefix("SPAN_KIND_"),
        "start_ns": span.start_time_unix_nano,
        "end_ns": span.end_time_unix_nano,
        "attributes": attributes(span.attributes),
        "events": [{"name": e.name, "attributes": attributes(e.attributes)} for e in span.events],
        "links": [
            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
             "attributes": attributes(link.attributes)}
            for link in span.links
        ],
        "status": {
            "code": STATUS_CODE.Name(span.status.code).removeprefix("STATUS_CODE_"),
            "message": span.status.message,
        },
    }


class Sink:
    """OUT_FILE, written one whole export request at a time (gRPC and HTTP use threads)."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = None if path == "-" else open(path, "a", encoding="utf-8")
        self.count = 0

    def record(self, transport, headers, request):
        if self.file is None:
            with self.lock:
                self.count += sum(len(ss.spans) for rs in request.resource_spans
                                  for ss in rs.scope_spans)
            return
        spans = [
            span_record(transport, attributes(rs.resource.attributes), ss.scope.name, span)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        lines = [{"export": transport, "headers": headers, "spans": len(spans)}] + spans
        with self.lock:
            for line in lines if not self.file.closed else ():  # closed: shutting down
                self.file.write(json.dumps(line) + "\n")
                self.file.flush()


def merge_headers(pairs):
    """Lower-case names; repeated headers joined with ", "; binary gRPC values as hex."""
    headers = {}
    for name, value in pairs:
        name = name.lower()
        value = value.hex() if isinstance(value, bytes) else value
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def http_handler(sink):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            if self.path.split("?", 1)[0] != "/v1/traces":
                return self.send_error(404)
            content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip()
            if content_type != "application/x-protobuf":
                return self.send_error(415, "only application/x-protobuf")
            body = self.read_body()
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                if self.headers.get("Content-Encoding", "").strip().lower() == "gzip":
                    body = gzip.decompress(body)
                request.ParseFromString(body)
            except Exception as error:  # bad gzip, or DecodeError from any protobuf backend
                return self.send_error(400, f"bad ExportTraceServiceRequest: {error}")
            sink.record("http", merge_headers(self.headers.items()), request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def do_GET(self):
            self.send_error(404)

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b""
            while size := int(self.rfile.readline().split(b";", 1)[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return body

        def log_message(self, format, *args):
            pass

    return Handler


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        self.sink.record("grpc", merge_headers(context.invocation_metadata()), request)
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: otlp_receiver.py OUT_FILE")
    sink = Sink(sys.argv[1])
    stop = threading.Event()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), http_handler(sink))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(sink), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def watch_stdin():
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader makes
        # interpreter shutdown abort.
        try:
            while os.read(0, 65536):
                pass
        except OSError:  # no usable stdin: treat it as closed
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    http_port = httpd.server_address[1]
    print(json.dumps({"http": f"http://127.0.0.1:{http_port}",
                      "grpc": f"http://127.0.0.1:{grpc_port}"}), flush=True)

    while not stop.wait(0.5):
        pass
    server.stop(grace=1).wait()
    httpd.shutdown()
    httpd.server_close()
    with sink.lock:
        if sink.file is None:
            print(json.dumps({"spans": sink.count}), flush=True)
        else:
            sink.file.close()


if __name__ == "__main__":
    main()
