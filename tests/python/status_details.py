"""An independent client reads the google.rpc details of a refusal: calls a cross-city
service through a node with a malformed purpose and prints what grpc-status-details-bin
holds, decoded with grpcio-status and googleapis-common-protos.

usage: status_details.py NODE_ADDR TOKEN
prints JSON: {"code": ..., "reason": ..., "domain": ..., "fields": [...]}
"""
import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def main():
    addr, token = sys.argv[1:3]
    channel = grpc.insecure_channel(addr)
    submit = channel.unary_unary(
        "/tongban.crosscity.v1.CrossCityService/Submit",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    metadata = [
        ("authorization", "Bearer " + token),
        ("x-tongban-target-city", "qingdao"),
        ("x-tongban-purpose", "Case Handling!"),
    ]
    out = {}
    try:
        submit(b"", metadata=metadata, timeout=5)
        out["code"] = "OK"
    except grpc.RpcError as e:
        out["code"] = e.code().name
        status = rpc_status.from_call(e)
        out["fields"] = []
        for detail in status.details if status else []:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                out["reason"], out["domain"] = info.reason, info.domain
            elif detail.Unpack(bad):
                out["fields"] += [v.field for v in bad.field_violations]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
