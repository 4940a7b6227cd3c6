"""Patches a copy of h2's HPACK encoder (src/hpack/encoder.rs) so that every header name
and value it does not index goes as a raw literal (RFC 7541 section 5.2, H bit clear)
instead of being Huffman-coded. Used by bench/ab.sh's "raw hpack" variant only; the
node's own build uses h2 as published.

A decoder of any HTTP/2 implementation accepts both forms, so a node built this way still
talks to every peer, provider and caller; what changes is the CPU on both ends (no Huffman
coding on the way out, and a value is a slice of the received frame instead of a newly
decoded buffer on the way in) against a few more bytes on the wire.
"""

import sys

path = sys.argv[1]
src = open(path, encoding="utf-8").read()
head = "fn encode_str(val: &[u8], dst: &mut BytesMut) {"
start = src.find(head)
if start < 0:
    sys.exit(f"h2-raw-literals: no `{head}` in {path}: h2's encoder changed, update this patch")
end = src.index("\n}\n", start) + 3
raw = """fn encode_str(val: &[u8], dst: &mut BytesMut) {
    // A raw literal (RFC 7541 section 5.2, H = 0): no Huffman coding.
    encode_int(val.len(), 7, 0, dst);
    dst.extend_from_slice(val);
}
"""
src = src[:start] + raw + src[end:]
if "use super::{huffman, Header};" not in src:
    sys.exit(f"h2-raw-literals: {path} does not import huffman as expected")
src = src.replace("use super::{huffman, Header};", "use super::Header;")
open(path, "w", encoding="utf-8").write(src)
print(f"h2-raw-literals: {path} patched")
