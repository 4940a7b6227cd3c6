"""A department-side client in Python submits a malformed application for a cross-city item
through its home node, with stubs generated from tongban/crosscity/v2 (grpcio-tools), and
reads the google.rpc.BadRequest in grpc-status-details-bin (grpcio-status).

usage: crosscity_v2_bad_input.py PROTO_ROOT NODE_ADDR TOKEN SUBJECT CONSENT
prints JSON: {"code": ..., "reason": ..., "fields": {field: description}, "message": ...}
"""
import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
import stubs


def main() -> int:
    proto_root, addr, token, subject, consent = sys.argv[1:6]
    try:
        stubs.generate(proto_root, "tongban/crosscity/v2/crosscity.proto")
    except RuntimeError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    from tongban.crosscity.v2 import crosscity_pb2 as pb, crosscity_pb2_grpc as pbg

    metadata = [
        ("authorization", f"Bearer {token}"),
        ("x-tongban-purpose", "case-handling"),
        ("x-tongban-target-city", "qingdao"),
        ("x-tongban-catalog-code", "JQ-09"),
        ("x-tongban-subject", subject),
        ("x-tongban-consent", consent),
    ]
    request = pb.SubmitRequest(
        catalog_code="JQ-09",
        applicant_id=subject,
        fields={
            # account_number missing; the others malformed
            "property_division": "990212",
            "purchase_contract_number": "qd 2026",
            "amount_yuan": "-5",
        },
        materials=[pb.MaterialRef(kind="selfie", uri="https://docs.example/x", sha256="00")],
    )
    result = {}
    with grpc.insecure_channel(addr) as channel:
        try:
            pbg.CrossCityServiceStub(channel).Submit(request, metadata=metadata, timeout=10)
            result["code"] = "OK"
        except grpc.RpcError as e:
            result["code"] = e.code().name
            result["message"] = e.details()
            result["fields"] = {}
            status = rpc_status.from_call(e)
            for detail in status.details if status else []:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    result["reason"] = info.reason
                elif detail.Unpack(bad):
                    for v in bad.field_violations:
                        result["fields"][v.field] = v.description
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
