"""A city system in Python (grpcio) calling Submit through ADDR from THREADS threads, each on
a connection of its own, for SECONDS seconds once its stubs are ready (it then writes
READY_FILE). Prints one JSON document: the request ids of the calls that succeeded, and the
failures by status code name (with one message per code).

usage: load_through.py PROTO_ROOT ADDR TOKEN SECONDS THREADS READY_FILE
"""
import json
import sys
import threading
import time

import grpc
import stubs


def main() -> int:
    proto_root, addr, token = sys.argv[1], sys.argv[2], sys.argv[3]
    seconds, threads, ready = float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    try:
        stubs.generate(proto_root, "tongban/crosscity/v1/crosscity.proto")
    except RuntimeError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    from tongban.crosscity.v1 import crosscity_pb2 as pb, crosscity_pb2_grpc as pbg

    md = [
        ("authorization", f"Bearer {token}"),
        ("x-tongban-target-city", "jinan"),
        ("x-tongban-purpose", "case-handling"),
    ]
    lock = threading.Lock()
    ok, failed, messages = [], {}, {}
    end = time.monotonic() + seconds

    def worker() -> None:
        # A local subchannel pool: each thread its own connection through the balancer.
        with grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pbg.CrossCityServiceStub(ch)
            while time.monotonic() < end:
                try:
                    _, call = stub.Submit.with_call(
                        pb.SubmitRequest(catalog_code="JQ-03"), metadata=md, timeout=5)
                    rid = dict(call.initial_metadata()).get("x-tongban-request-id", "")
                    with lock:
                        ok.append(rid)
                except grpc.RpcError as e:
                    with lock:
                        name = e.code().name
                        failed[name] = failed.get(name, 0) + 1
                        messages.setdefault(name, e.details())

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    with open(ready, "w") as f:
        f.write("calling\n")
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps({"ok": ok, "failed": failed, "messages": messages}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
