"""A verifier of Tongban audit logs written from docs/audit-format.md alone: it shares no code
with the node (its own protobuf reader, its own RFC 6962 / RFC 9162 hashing, `cryptography`
for signatures and certificates, PyJWT for receipt seals).

usage:
  audit_verify.py log DIR [--checkpoints FILE] [--cert PEM] [--ca PEM --city CITY]
      verifies the segments of DIR (an audit directory); with --checkpoints (a JSON list of
      {"checkpoint": b64, "signature": b64}), that each is signed by the node certificate and
      holds for the log (head hash and tree root at its seq)
  audit_verify.py proof FILE --ca PEM
      checks a proof file (inclusion or consistency) against the city CA
  audit_verify.py receipt RECEIPT --cert PEM --issuer CITY
      checks a receipt against the providing node's certificate
  audit_verify.py archive DIR [--ca PEM]
      checks an archive (section 7): its files, certificate (against --ca, else its own
      ca.pem), checkpoints, chain and tree

prints one JSON object: {"ok": bool, "why": str, ...}; exit 0 when ok, 1 otherwise.
"""
import base64
import hashlib
import json
import os
import sys
import zlib

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


# --- protobuf, as much as the document needs ---------------------------------------------

def varint(b, i):
    shift, out = 0, 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        if not c & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(b):
    """(field number, wire type, value) of a message; bytes for length-delimited fields."""
    i, out = 0, []
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            if i + n > len(b):
                raise ValueError("truncated field")
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        out.append((num, wt, v))
    return out


def message(b, spec):
    """Decodes `b` with spec {number: (name, kind)}; kinds: uint, int, str, bytes."""
    out = {name: (0 if kind in ("uint", "int") else (b"" if kind == "bytes" else "")) for name, kind in spec.values()}
    for num, wt, v in fields(b):
        if num not in spec:
            continue
        name, kind = spec[num]
        if kind == "uint":
            out[name] = v
        elif kind == "int":
            out[name] = v - (1 << 64) if v >= 1 << 63 else v
        elif kind == "str":
            out[name] = v.decode("utf-8")
        else:
            out[name] = bytes(v)
    return out


LOG_ENTRY = {1: ("seq", "uint"), 2: ("prev_hash", "bytes"), 3: ("record", "bytes")}
CHECKPOINT = {1: ("city", "str"), 2: ("seq", "uint"), 3: ("head_hash", "bytes"),
              4: ("at_ms", "int"), 5: ("tree_root", "bytes")}
SIGNED = {1: ("checkpoint", "bytes"), 2: ("signature", "bytes")}
RECORD = {2: ("request_id", "str"), 3: ("side", "uint"), 4: ("node_city", "str"),
          8: ("caller_city", "str"), 9: ("caller_org", "str"), 12: ("service", "str"),
          13: ("method", "str"), 17: ("subject_pseudonym", "str"), 22: ("grpc_status", "uint"),
          26: ("receipt", "str")}


# --- hashing -------------------------------------------------------------------------------

def sha(b):
    return hashlib.sha256(b).digest()


def leaf_hash(b):
    return sha(b"\x00" + b)


def node(l, r):
    return sha(b"\x01" + l + r)


def mth(leaves):
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


class Frontier:
    """The roots of the perfect subtrees of a tree's leaves, largest first."""

    def __init__(self, size=0, nodes=()):
        self.size, self.nodes = size, list(nodes)
        bits = [l for l in range(63, -1, -1) if size >> l & 1]
        if bits != [l for l, _ in self.nodes]:
            raise Failure("the frontier does not fit its size")

    def push(self, leaf):
        level, h = 0, leaf
        while self.nodes and self.nodes[-1][0] == level:
            _, left = self.nodes.pop()
            h = node(left, h)
            level += 1
        self.nodes.append((level, h))
        self.size += 1

    def root(self):
        if not self.nodes:
            return sha(b"")
        acc = self.nodes[-1][1]
        for _, left in reversed(self.nodes[:-1]):
            acc = node(left, acc)
        return acc


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_root, second_root, proof):
    """RFC 9162 2.1.4.2."""
    if first == 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:
        path = [first_root] + path
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


# --- signatures and certificates --------------------------------------------------------

def load_cert(path_or_der):
    if isinstance(path_or_der, bytes):
        return x509.load_der_x509_certificate(path_or_der)
    data = open(path_or_der, "rb").read()
    return x509.load_pem_x509_certificate(data) if b"BEGIN" in data else x509.load_der_x509_certificate(data)


def verify_signature(cert, msg, sig):
    key = cert.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, msg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if len(sig) != 64:
                return False
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            key.verify(der, msg, ec.ECDSA(hashes.SHA256()))
        else:
            return False
        return True
    except InvalidSignature:
        return False


def trusted_for(cert, ca, city):
    """Issued by the city's CA and naming node.<city>.tongban."""
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as e:  # noqa: BLE001 - any failure means not trusted
        return f"not issued by {city}'s CA: {e}"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if f"node.{city}.tongban" not in names:
        return f"does not name node.{city}.tongban"
    return None


def checkpoint_of(signed, cert, what):
    cp = message(signed["checkpoint"], CHECKPOINT)
    if not verify_signature(cert, signed["checkpoint"], signed["signature"]):
        raise Failure(f"{what}: the signature does not verify with the node certificate")
    return cp


class Failure(Exception):
    pass


# --- the log ------------------------------------------------------------------------------

def read_log(directory, start=0, prev=bytes(32), frontier=None):
    """The entries of an audit directory (or an archive's segments) after seq `start`:
    [(seq, entry hash, leaf hash, record bytes, tree root after it)], or a Failure naming the
    first problem. A pruned log starts at its pruned.json."""
    base = os.path.join(directory, "pruned.json")
    if os.path.exists(base) and start == 0:
        b = json.load(open(base))
        start, prev = b["seq"], bytes.fromhex(b["hash"])
        frontier = Frontier(b["seq"], [(l, bytes.fromhex(h)) for l, h in b["frontier"]])
    frontier = frontier or Frontier()
    segs = []
    for name in os.listdir(directory):
        if name.startswith("seg-") and name.endswith(".log") and len(name) == 20:
            if int(name[4:16]) > start:
                segs.append((int(name[4:16]), os.path.join(directory, name)))
    segs.sort()
    entries = []
    for first, path in segs:
        if first != start + len(entries) + 1:
            raise Failure(f"{os.path.basename(path)} starts at seq {first}, expected {start + len(entries) + 1}")
        data = open(path, "rb").read()
        off = 0
        while off < len(data):
            if len(data) - off < 8:
                raise Failure(f"truncated frame at {os.path.basename(path)}:{off}")
            n = int.from_bytes(data[off:off + 4], "big")
            crc = int.from_bytes(data[off + 4:off + 8], "big")
            if n > 1 << 20:
                raise Failure(f"impossible length at {os.path.basename(path)}:{off}")
            payload = data[off + 8:off + 8 + n]
            if len(payload) != n:
                raise Failure(f"truncated frame at {os.path.basename(path)}:{off}")
            if zlib.crc32(payload) != crc:
                raise Failure(f"checksum mismatch at {os.path.basename(path)}:{off}")
            try:
                e = message(payload, LOG_ENTRY)
            except ValueError as err:
                raise Failure(f"undecodable entry at {os.path.basename(path)}:{off}: {err}")
            want = start + len(entries) + 1
            if e["seq"] != want:
                raise Failure(f"sequence: expected {want}, found {e['seq']}")
            if e["prev_hash"] != prev:
                raise Failure(f"chain broken at seq {want}: prev_hash is not the previous entry's hash")
            prev = sha(payload)
            frontier.push(leaf_hash(payload))
            entries.append((want, prev, leaf_hash(payload), e["record"], frontier.root()))
            off += 8 + n
    return start, entries


def check_checkpoints(signed_list, cert, start, entries):
    """Each checkpoint signed by `cert`, and holding for the entries (those of the part a
    prune archived are skipped: the archive holds them). Returns how many were checked."""
    by_seq = {e[0]: e for e in entries}
    last = start + len(entries)
    checked = 0
    for s in signed_list:
        signed = {"checkpoint": base64.b64decode(s["checkpoint"]), "signature": base64.b64decode(s["signature"])}
        cp = checkpoint_of(signed, cert, "checkpoint")
        if cp["seq"] > last:
            raise Failure(f"the log ends at seq {last} but a checkpoint covers seq {cp['seq']}")
        if cp["seq"] <= start:
            continue
        e = by_seq[cp["seq"]]
        if e[1] != cp["head_hash"]:
            raise Failure(f"the checkpoint at seq {cp['seq']} names another head hash")
        if cp["tree_root"] and e[4] != cp["tree_root"]:
            raise Failure(f"the checkpoint at seq {cp['seq']} names another tree root")
        checked += 1
    return checked


def cmd_log(args):
    directory = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    try:
        start, entries = read_log(directory)
    except Failure as f:
        return {"ok": False, "why": str(f)}
    out = {"ok": True, "start": start, "records": len(entries), "head_seq": start + len(entries),
           "head_hash": entries[-1][1].hex() if entries else "",
           "state_changes": sum(1 for e in entries if message(e[3], RECORD)["side"] == 4)}
    if "--checkpoints" in opts:
        cert = load_cert(opts["--cert"])
        if "--ca" in opts:
            why = trusted_for(cert, load_cert(opts["--ca"]), opts["--city"])
            if why:
                return {"ok": False, "why": f"node certificate {why}"}
        try:
            out["checkpoints"] = check_checkpoints(json.load(open(opts["--checkpoints"])), cert, start, entries)
        except Failure as f:
            return {"ok": False, "why": str(f)}
    return out


def cmd_archive(args):
    directory = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    try:
        m = json.load(open(os.path.join(directory, "manifest.json")))
        if m.get("format") != "tongban-audit-archive/1":
            return {"ok": False, "why": "not an archive"}
        for name, digest in m["files"].items():
            if ".." in name or name.startswith("/"):
                return {"ok": False, "why": f"the manifest names {name}, outside the archive"}
            if hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest() != digest:
                return {"ok": False, "why": f"{name} is not the file the manifest names"}
        seg_dir = os.path.join(directory, "segments")
        listed = {n for n in os.listdir(seg_dir)}
        if any(f"segments/{n}" not in m["files"] for n in listed):
            return {"ok": False, "why": "a segment is not in the manifest"}
        cert = load_cert(os.path.join(directory, "node.pem"))
        ca = load_cert(opts.get("--ca", os.path.join(directory, "ca.pem")))
        why = trusted_for(cert, ca, m["city"])
        if why:
            return {"ok": False, "why": f"node certificate {why}"}
        frontier = Frontier(m["from_seq"] - 1, [(l, bytes.fromhex(h)) for l, h in m["frontier"]])
        start, entries = read_log(seg_dir, m["from_seq"] - 1, bytes.fromhex(m["prev_hash"]), frontier)
        if start + len(entries) != m["to_seq"]:
            return {"ok": False, "why": f"the archive holds records to {start + len(entries)}, its manifest says {m['to_seq']}"}
        signed = json.load(open(os.path.join(directory, "checkpoints.json")))
        checked = check_checkpoints(signed, cert, start, entries)
        seqs = [message(base64.b64decode(s["checkpoint"]), CHECKPOINT)["seq"] for s in signed]
        if m["to_seq"] not in seqs:
            return {"ok": False, "why": "no checkpoint at the archive's last record"}
    except Failure as f:
        return {"ok": False, "why": str(f)}
    except (OSError, KeyError, ValueError) as e:
        return {"ok": False, "why": f"unreadable archive: {e}"}
    return {"ok": True, "why": "", "city": m["city"], "from_seq": m["from_seq"], "to_seq": m["to_seq"],
            "records": len(entries), "checkpoints": checked}


def cmd_proof(args):
    path = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    p = json.load(open(path))
    if p.get("format") != "tongban-audit-proof/1":
        return {"ok": False, "why": "not a proof file"}
    cert = load_cert(base64.b64decode(p["node_certificate"]))
    ca = load_cert(opts["--ca"])

    def signed(s):
        return {"checkpoint": base64.b64decode(s["checkpoint"]), "signature": base64.b64decode(s["signature"])}

    try:
        if "inclusion" in p:
            inc = p["inclusion"]
            cp = checkpoint_of(signed(inc["checkpoint"]), cert, "checkpoint")
            why = trusted_for(cert, ca, cp["city"])
            if why:
                return {"ok": False, "why": f"node certificate {why}"}
            entry = base64.b64decode(inc["entry"])
            e = message(entry, LOG_ENTRY)
            if inc["tree_size"] != cp["seq"] or e["seq"] != inc["leaf_index"] + 1:
                return {"ok": False, "why": "the proof's sizes do not match its checkpoint and entry"}
            proof = [bytes.fromhex(h) for h in inc["hashes"]]
            ok = verify_inclusion(inc["leaf_index"], inc["tree_size"], leaf_hash(entry), proof, cp["tree_root"])
            rec = message(e["record"], RECORD)
            return {"ok": ok, "why": "" if ok else "the path does not lead to the signed tree root",
                    "city": cp["city"], "seq": e["seq"], "tree_size": cp["seq"],
                    "request_id": rec["request_id"], "subject_pseudonym": rec["subject_pseudonym"]}
        con = p["consistency"]
        a = checkpoint_of(signed(con["first"]), cert, "first")
        b = checkpoint_of(signed(con["second"]), cert, "second")
        why = trusted_for(cert, ca, a["city"])
        if why or a["city"] != b["city"]:
            return {"ok": False, "why": f"node certificate {why or 'of two cities'}"}
        proof = [bytes.fromhex(h) for h in con["hashes"]]
        ok = verify_consistency(a["seq"], b["seq"], a["tree_root"], b["tree_root"], proof)
        return {"ok": ok, "why": "" if ok else "the later tree does not extend the earlier one",
                "city": a["city"], "first": a["seq"], "second": b["seq"]}
    except Failure as f:
        return {"ok": False, "why": str(f)}


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def cmd_receipt(args):
    token = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    cert = load_cert(opts["--cert"])
    key = cert.public_key()
    alg = "EdDSA" if isinstance(key, ed25519.Ed25519PublicKey) else "ES256"
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if not token.startswith("m1."):
        claims = jwt.decode(token, pem, algorithms=[alg], options={"verify_aud": False})
        return {"ok": claims.get("iss") == opts["--issuer"], "why": "", "claims": claims}
    try:
        claims_b64, index, path_b64, seal = token[3:].split(".", 3)
        claims_json = b64url(claims_b64)
        claims = json.loads(claims_json)
    except ValueError as e:
        return {"ok": False, "why": f"not a receipt: {e}"}
    try:
        sealed = jwt.decode(seal, pem, algorithms=[alg], options={"verify_aud": False, "verify_exp": False})
    except jwt.InvalidTokenError as e:
        return {"ok": False, "why": f"seal: {e}"}
    if claims.get("iss") != opts["--issuer"] or sealed.get("iss") != opts["--issuer"]:
        return {"ok": False, "why": "another issuer"}
    index, size = int(index), int(sealed["n"])
    path = b64url(path_b64)
    if index >= size or len(path) % 32:
        return {"ok": False, "why": "bad index or path"}
    h, i = leaf_hash(claims_json), 0
    while size > 1:
        if index ^ 1 < size:
            if i + 32 > len(path):
                return {"ok": False, "why": "path too short"}
            s = path[i:i + 32]
            i += 32
            h = node(h, s) if index % 2 == 0 else node(s, h)
        index //= 2
        size = (size + 1) // 2
    if i != len(path):
        return {"ok": False, "why": "path too long"}
    ok = h.hex() == sealed["root"]
    return {"ok": ok, "why": "" if ok else "not under the sealed root", "claims": claims}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    out = {"log": cmd_log, "proof": cmd_proof, "receipt": cmd_receipt, "archive": cmd_archive}[cmd](args)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
