"""Caller tokens made with PyJWT, an implementation independent of the gateway's, from a
city's dev identity provider key. Prints a JSON object: case name -> token.

usage: make_tokens.py IDP_KEY_PEM KID CITY
"""
import base64
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization


def main() -> int:
    key_path, kid, city = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    raw_pub = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    now = int(time.time())
    base = {
        "iss": f"https://idp.{city}.tongban", "aud": f"tongban:{city}", "sub": "py-system",
        "iat": now, "nbf": now, "exp": now + 600, "city": city, "org": "hrss", "roles": [],
    }
    eddsa = lambda claims, headers=None: jwt.encode(
        claims, key, algorithm="EdDSA", headers={"kid": kid} if headers is None else headers)
    tokens = {
        "valid": eddsa(base),
        "expired": eddsa({**base, "exp": now - 3600, "nbf": now - 7200, "iat": now - 7200}),
        "not_yet_valid": eddsa({**base, "nbf": now + 3600}),
        "wrong_iss": eddsa({**base, "iss": "https://idp.evil.example"}),
        "wrong_aud": eddsa({**base, "aud": "tongban:elsewhere"}),
        "no_kid": eddsa(base, headers={}),
        "unknown_kid": eddsa(base, headers={"kid": kid + "-retired"}),
        "alg_none": jwt.encode(base, None, algorithm="none", headers={"kid": kid}),
        "hs256_with_public_key": jwt.encode(
            base, base64.urlsafe_b64encode(raw_pub).rstrip(b"=").decode(), algorithm="HS256",
            headers={"kid": kid}),
    }
    print(json.dumps(tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
