"""A minimal OpenTelemetry logs collector (OTLP/gRPC LogsService.Export) for the tests.

Every log record received is appended to --out as one JSON line: the resource attributes,
the scope name, the record's body (string) and attributes (as strings), and its time. Nothing
else of a collector: no batching, no export, no retries.
"""

import argparse
import json
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value"):
        return str(getattr(v, kind))
    return getattr(v, kind)


class Collector(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        for resource_logs in request.resource_logs:
            resource = {kv.key: value(kv.value) for kv in resource_logs.resource.attributes}
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    lines.append(json.dumps({
                        "resource": resource,
                        "scope": scope_logs.scope.name,
                        "time_unix_nano": record.time_unix_nano,
                        "body": value(record.body),
                        "attributes": {kv.key: value(kv.value) for kv in record.attributes},
                    }))
        with self.lock, open(self.out, "a") as f:
            f.writelines(line + "\n" for line in lines)
        return logs_service_pb2.ExportLogsServiceResponse()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Collector(args.out), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"otel collector on 127.0.0.1:{args.port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
