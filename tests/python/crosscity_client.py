"""A city system written in Python calling a Tongban node with stubs generated from the
provider's own proto (grpcio-tools, in a temporary directory). Prints one JSON document.

usage: crosscity_client.py PROTO_ROOT NODE_ADDR TARGET_CITY TOKEN
"""
import json
import sys

import grpc
import stubs


def main() -> int:
    proto_root, addr, target, token = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    auth = [("authorization", f"Bearer {token}"), ("x-tongban-purpose", "case-handling")]
    try:
        stubs.generate(proto_root, "tongban/crosscity/v1/crosscity.proto")
    except RuntimeError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    from tongban.crosscity.v1 import crosscity_pb2 as pb, crosscity_pb2_grpc as pbg

    result = {}
    with grpc.insecure_channel(addr) as channel:
        stub = pbg.CrossCityServiceStub(channel)
        md = auth + [("x-tongban-target-city", target), ("x-tongban-request-id", "py-req-1")]
        resp, call = stub.Submit.with_call(
            pb.SubmitRequest(catalog_code="JQ-03", fields={"applicant": "python"}),
            metadata=md, timeout=5)
        result["submit"] = {
            "application_id": resp.application_id,
            "provider_city": resp.provider_city,
            "origin_city": resp.origin_city,
            "request_id": dict(call.initial_metadata()).get("x-tongban-request-id"),
        }
        states = [s.state for s in stub.WatchStatus(
            pb.GetStatusRequest(application_id=resp.application_id),
            metadata=auth + [("x-tongban-target-city", target)], timeout=5)]
        result["watch"] = states
        try:
            stub.Submit(pb.SubmitRequest(catalog_code="JQ-03"),
                        metadata=auth + [("x-tongban-target-city", "beijing")], timeout=5)
            result["unknown_city"] = {"code": "OK"}
        except grpc.RpcError as e:
            result["unknown_city"] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
