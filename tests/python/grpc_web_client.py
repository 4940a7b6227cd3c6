"""A browser's view of a node, without a browser: gRPC-Web framed by hand (the 5-byte
message prefix, the 0x80 trailer frame, base64 for grpc-web-text) over HTTP/1.1 with
urllib, messages from stubs generated from the project's protos (grpcio-tools). Also the
CORS preflight. Prints one JSON document.

usage: grpc_web_client.py PROTO_ROOT WEB_ADDR TOKEN ALLOWED_ORIGIN
"""
import base64
import json
import struct
import sys
import urllib.error
import urllib.request

import stubs


def frames(body):
    """Splits a gRPC-Web body into (messages, trailers)."""
    messages, trailers, i = [], {}, 0
    while i + 5 <= len(body):
        flag = body[i]
        (n,) = struct.unpack(">I", body[i + 1:i + 5])
        data = body[i + 5:i + 5 + n]
        i += 5 + n
        if flag & 0x80:
            for line in data.decode("utf-8").split("\r\n"):
                if ":" in line:
                    k, v = line.split(":", 1)
                    trailers[k.strip().lower()] = v.strip()
        else:
            messages.append(data)
    return messages, trailers


def call(addr, path, message, headers, text=False, origin=None):
    payload = b"\x00" + struct.pack(">I", len(message)) + message
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    if text:
        payload = base64.b64encode(payload)
    h = {"content-type": content_type, "x-grpc-web": "1", "accept": content_type}
    if origin:
        h["origin"] = origin
    h.update(headers)
    req = urllib.request.Request(f"http://{addr}{path}", data=payload, headers=h, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        resp_headers = {k.lower(): v for k, v in r.headers.items()}
    if text:
        body = base64.b64decode(body)
    messages, trailers = frames(body)
    # A trailers-only answer carries its status in the headers.
    status = trailers.get("grpc-status", resp_headers.get("grpc-status"))
    message = trailers.get("grpc-message", resp_headers.get("grpc-message", ""))
    return {
        "content_type": resp_headers.get("content-type"),
        "status": int(status) if status is not None else None,
        "message": urllib.parse.unquote(message),
        "messages": messages,
        "headers": resp_headers,
    }


def preflight(addr, path, origin):
    req = urllib.request.Request(f"http://{addr}{path}", method="OPTIONS", headers={
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-grpc-web,x-tongban-target-city",
    })
    with urllib.request.urlopen(req, timeout=10) as r:
        return {"status": r.status, "headers": {k.lower(): v for k, v in r.headers.items()}}


def main() -> int:
    proto_root, addr, token, origin = sys.argv[1:5]
    try:
        stubs.generate(proto_root, "tongban/registry/v1/registry.proto", "tongban/crosscity/v1/crosscity.proto", grpc=False)
    except RuntimeError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    from tongban.registry.v1 import registry_pb2 as reg
    from tongban.crosscity.v1 import crosscity_pb2 as cc

    auth = {"authorization": f"Bearer {token}"}
    result = {}
    # The registry's listing, binary and text.
    for text in (False, True):
        r = call(addr, "/tongban.registry.v1.Registry/ListServices",
                 reg.ListServicesRequest().SerializeToString(), auth, text=text, origin=origin)
        listed = reg.ListServicesResponse.FromString(r["messages"][0]) if r["messages"] else None
        result["list_text" if text else "list_binary"] = {
            "status": r["status"], "content_type": r["content_type"],
            "cities": sorted({s.city for s in listed.services}) if listed else [],
            "allow_origin": r["headers"].get("access-control-allow-origin"),
        }
    # A cross-city service through the transparent proxy.
    md = dict(auth)
    md.update({"x-tongban-target-city": "qingdao", "x-tongban-purpose": "case-handling"})
    r = call(addr, "/tongban.crosscity.v1.CrossCityService/Submit",
             cc.SubmitRequest(catalog_code="JQ-03").SerializeToString(), md, origin=origin)
    sub = cc.SubmitResponse.FromString(r["messages"][0]) if r["messages"] else None
    result["submit"] = {"status": r["status"], "message": r["message"],
                        "provider_city": sub.provider_city if sub else None,
                        "request_id": r["headers"].get("x-tongban-request-id")}
    # Not offered to browsers; a bad token.
    r = call(addr, "/tongban.registry.v1.Registry/RegisterService",
             reg.RegisterServiceRequest().SerializeToString(), auth)
    result["register"] = {"status": r["status"], "message": r["message"]}
    r = call(addr, "/tongban.registry.v1.Registry/ListServices",
             reg.ListServicesRequest().SerializeToString(), {"authorization": "Bearer nonsense"})
    result["bad_token"] = {"status": r["status"], "message": r["message"]}
    # CORS: the allowed origin's preflight, and another origin's.
    result["preflight_allowed"] = preflight(addr, "/tongban.registry.v1.Registry/ListServices", origin)
    result["preflight_other"] = preflight(addr, "/tongban.registry.v1.Registry/ListServices",
                                          "http://evil.example")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
