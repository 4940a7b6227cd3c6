"""Groups a `perf report --no-children --sort dso,sym --stdio` of a node by what each symbol
belongs to, and prints a Markdown table: the share of the node's CPU samples in each group and
its top symbols. `bench/run.sh` uses it to explain where a call's CPU goes.

Usage: perf report ... | python3 bench/profile_groups.py LABEL
"""

import re
import sys

# First match wins: the order puts specific groups before generic ones.
GROUPS = [
    ("kernel: scheduling, futex, epoll", r"\[k\].*(sched|futex|schedule|switch_to|finish_task|try_to_wake|ep_poll|epoll|pick_next|enqueue|dequeue|update_curr|idle|wake)"),
    ("kernel: TCP and sockets", r"\[k\].*(tcp|inet|sock|skb|ip_|__dev|loopback|net_rx|netif|napi|__x64_sys_(sendto|recvfrom|writev|readv|write|read)|copy_user|copyin|copyout|_copy_to_iter|_copy_from_iter)"),
    ("kernel: files and fsync", r"\[k\].*(ext4|jbd2|blk|fsync|vfs_|filemap|folio|page_cache|xfs|bio_|nvme|virtblk|iomap)"),
    ("kernel: other", r"\[k\]"),
    ("signatures and hashes (aws-lc: Ed25519, SHA-2, AES-GCM)", r"(aws_lc|ed25519|edwards25519|bignum_|x25519|curve25519|sha256|sha512|sha2::|SHA256|SHA512|fiat_|aes_|gcm_|GFp|ring_core|bn_|ec_GFp|p256)"),
    ("TLS records (rustls)", r"rustls::"),
    ("HTTP/2 (h2, hpack) and hyper", r"(h2::|hpack|hyper::|hyper_util::)"),
    ("tonic and prost", r"(tonic::|prost::|tonic_web)"),
    ("JWT and JSON (jsonwebtoken, serde_json, base64)", r"(jsonwebtoken|serde_json|serde::|base64)"),
    ("audit (log, index, checksums)", r"(tongban_gateway::audit|crc32|crc32fast)"),
    ("store (sled)", r"sled::"),
    ("tracing and metrics", r"(tracing|opentelemetry|prometheus_client)"),
    ("tokio runtime", r"tokio::"),
    ("malloc and free", r"(malloc|free|_int_|cfree|calloc|realloc|tcache|arena|sysmalloc|malloc_consolidate)"),
    ("memcpy, memmove, memset", r"(memcpy|memmove|memset|memcmp)"),
    ("the node's own code", r"\S+\s+\[\.\]\s+.*tongban_"),
    ("other", r"."),
]


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "profile"
    line_re = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+(.*)$")
    totals: dict[str, float] = {}
    tops: dict[str, list[tuple[float, str]]] = {}
    for line in sys.stdin:
        if line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
        text = f"{dso} {sym}"
        for name, pattern in GROUPS:
            if re.search(pattern, text):
                totals[name] = totals.get(name, 0.0) + pct
                tops.setdefault(name, []).append((pct, re.sub(r"^\[[.k]\]\s+", "", sym)))
                break
    if not totals:
        print(f"\nNo samples for {label} (perf could not record).\n")
        return
    print(f"\n{label} (share of the node's CPU samples):\n")
    print("| group | share | top symbols |")
    print("| --- | ---: | --- |")
    for name, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        top = sorted(tops[name], reverse=True)[:3]
        syms = "; ".join(f"`{s[:60]}` {p:.1f}%" for p, s in top)
        print(f"| {name} | {total:.1f}% | {syms} |")
    print()


if __name__ == "__main__":
    main()
