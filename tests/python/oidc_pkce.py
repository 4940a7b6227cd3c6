"""A public client signing a citizen in at the dev identity provider with OpenID Connect's
authorization-code flow and PKCE (S256), as a portal's page does, written with urllib and
PyJWT only: discovery, the sign-in page, the redirect with a code, the token exchange, the
token verified with the provider's JWKS. Then what must fail: a wrong verifier, a reused
code, an unregistered redirect URI, PKCE missing. Prints one JSON document.

usage: oidc_pkce.py BASE_URL CLIENT_ID REDIRECT_URI AUDIENCE
"""
import base64
import hashlib
import json
import re
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request

import jwt


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


opener = urllib.request.build_opener(NoRedirect)


def get(url):
    try:
        with opener.open(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8")


def post(url, fields, origin=None):
    data = urllib.parse.urlencode(fields).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if origin:
        headers["origin"] = origin
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8")


def pkce():
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def main():
    base, client_id, redirect_uri, audience = sys.argv[1:5]
    origin = "/".join(redirect_uri.split("/")[:3])
    out = {}
    status, _, body = get(f"{base}/.well-known/openid-configuration")
    conf = json.loads(body)
    out["discovery"] = {"status": status, "methods": conf["code_challenge_methods_supported"]}

    def sign_in(user_index, challenge, state):
        q = urllib.parse.urlencode({
            "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
            "scope": "openid", "state": state, "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        status, _, page = get(f"{conf['authorization_endpoint']}?{q}")
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
        fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
        users = re.findall(r'name="user" value="(\d+)"[^>]*>([^<]+)<', page)
        fields["user"] = str(user_index)
        st, headers, _ = post(conf["authorization_endpoint"], fields)
        location = headers.get("Location") or headers.get("location") or ""
        params = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)
        return status, users, st, location, params

    verifier, challenge = pkce()
    page_status, users, st, location, params = sign_in(0, challenge, "s-1")
    out["sign_in"] = {"page_status": page_status, "users": [u[1] for u in users],
                      "redirect_status": st, "to_redirect_uri": location.startswith(redirect_uri + "?"),
                      "state": params.get("state", [None])[0]}
    code = params["code"][0]
    token_fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                    "client_id": client_id, "code_verifier": verifier}
    st, headers, body = post(conf["token_endpoint"], token_fields, origin=origin)
    tok = json.loads(body)
    jwks = jwt.PyJWKClient(conf["jwks_uri"])
    key = jwks.get_signing_key_from_jwt(tok["access_token"])
    claims = jwt.decode(tok["access_token"], key.key, algorithms=["EdDSA"], audience=audience,
                        issuer=conf["issuer"])
    out["token"] = {"status": st, "token_type": tok["token_type"], "expires_in": tok["expires_in"],
                    "sub": claims["sub"], "roles": claims["roles"], "org": claims["org"],
                    "cors": headers.get("access-control-allow-origin"),
                    "access_token": tok["access_token"]}
    # The same code again: refused.
    st, _, body = post(conf["token_endpoint"], token_fields)
    out["reused"] = {"status": st, **json.loads(body)}
    # A wrong verifier: refused (and the code is spent).
    verifier2, challenge2 = pkce()
    _, _, _, _, params = sign_in(1, challenge2, "s-2")
    wrong = dict(token_fields, code=params["code"][0], code_verifier=pkce()[0])
    st, _, body = post(conf["token_endpoint"], wrong)
    out["wrong_verifier"] = {"status": st, **json.loads(body)}
    # An unregistered redirect URI, and no PKCE: the sign-in page refuses.
    q = urllib.parse.urlencode({"response_type": "code", "client_id": client_id,
                                "redirect_uri": "http://evil.example/cb", "code_challenge": challenge,
                                "code_challenge_method": "S256"})
    st, _, body = get(f"{conf['authorization_endpoint']}?{q}")
    out["bad_redirect"] = {"status": st, "says": "redirect_uri" in body}
    q = urllib.parse.urlencode({"response_type": "code", "client_id": client_id,
                                "redirect_uri": redirect_uri, "code_challenge": verifier,
                                "code_challenge_method": "plain"})
    st, _, body = get(f"{conf['authorization_endpoint']}?{q}")
    out["no_pkce"] = {"status": st, "says": "S256" in body}
    # Another origin gets no CORS allowance at the token endpoint.
    st, headers, _ = post(conf["token_endpoint"], {"grant_type": "authorization_code"}, origin="http://evil.example")
    out["cors_other"] = headers.get("access-control-allow-origin")
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
