"""What a group commit's fdatasync costs when the append grows the file, against the same
append into space already allocated (the shape the audit log's segments would take if they
were preallocated). Outside the node: one 600-byte record (about an audit record) written
and fdatasync'ed per operation, as the audit writer does at 1,000 calls/s, where every call
is its own group commit.

    python3 bench/fsync-prealloc.py [DIR]   # DIR on the disk the node's data_dir uses

Prints wall time and the process's CPU time (user + system) per operation for:
  append     the file grows with every write (today's segments)
  zeros      the file written full of zeros first, then overwritten from its start
  fallocate  posix_fallocate to its final size first (unwritten extents), then overwritten
  keep_size  fallocate with FALLOC_FL_KEEP_SIZE (blocks reserved, size still grows)
"""

import ctypes
import os
import resource
import sys
import tempfile
import time

RECORD = b"x" * 600
OPS = 2000
FALLOC_FL_KEEP_SIZE = 1
libc = ctypes.CDLL(None, use_errno=True)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(directory, how):
    path = os.path.join(directory, f"fsync-prealloc-{how}")
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    size = OPS * len(RECORD) + 4096
    try:
        if how == "zeros":
            os.write(fd, b"\0" * size)
            os.lseek(fd, 0, os.SEEK_SET)
        elif how == "fallocate":
            os.posix_fallocate(fd, 0, size)
        elif how == "keep_size":
            if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(size)) != 0:
                raise OSError(ctypes.get_errno(), "fallocate(FALLOC_FL_KEEP_SIZE)")
        os.fsync(fd)
        t0, c0 = time.perf_counter(), cpu()
        for _ in range(OPS):
            os.write(fd, RECORD)
            os.fdatasync(fd)
        t1, c1 = time.perf_counter(), cpu()
    finally:
        os.close(fd)
        os.unlink(path)
    return 1e6 * (t1 - t0) / OPS, 1e6 * (c1 - c0) / OPS


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    ways = ["append", "zeros", "fallocate", "keep_size"]
    results = {w: [] for w in ways}
    for _ in range(3):  # interleaved rounds; the median of each
        for w in ways:
            results[w].append(run(directory, w))
    print(f"{OPS} writes of {len(RECORD)} bytes, each followed by fdatasync, in {directory}")
    print(f"{'':10s} {'wall us/op':>10s} {'cpu us/op':>10s}")
    for w in ways:
        walls = sorted(r[0] for r in results[w])
        cpus = sorted(r[1] for r in results[w])
        print(f"{w:10s} {walls[1]:10.1f} {cpus[1]:10.1f}")


if __name__ == "__main__":
    main()
