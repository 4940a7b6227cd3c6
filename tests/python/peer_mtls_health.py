"""Acts as a peer node with gRPC's C core (Python grpcio): opens an mTLS channel to a
node's peer listener with a node certificate and calls grpc.health.v1.Health/Check.

usage: peer_mtls_health.py ADDR CA_PEM CERT_PEM KEY_PEM SERVER_NAME
prints JSON: {"ok": true, "status": <int>} or {"ok": false, "code": ..., "details": ...}
"""
import json
import sys

import grpc


def main():
    addr, ca, cert, key, name = sys.argv[1:6]
    read = lambda p: open(p, "rb").read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    channel = grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", name)]
    )
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        # An empty HealthCheckRequest; the answer is field 1 (status) as a varint.
        answer = check(b"", timeout=5)
        status = answer[1] if len(answer) >= 2 and answer[0] == 0x08 else 0
        print(json.dumps({"ok": True, "status": status}))
    except grpc.RpcError as e:
        print(json.dumps({"ok": False, "code": e.code().name, "details": e.details()}))


if __name__ == "__main__":
    main()
