"""O_DIRECT reads of a 1 GiB file: throughput of requests of n bytes at random aligned offsets, q in flight (q threads,
one request each). Used for docs/validation/nvme-read.md: `python docs/validation/nvme-read.py /path/on/the/disk/blob`."""
import json
import mmap
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

PATH = sys.argv[1] if len(sys.argv) > 1 else "nvme-read.blob"  # a 1 GiB file on the disk to measure
SIZE = 1 << 30
if not os.path.exists(PATH) or os.path.getsize(PATH) != SIZE:
    with open(PATH, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(SIZE >> 20):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())

fd = os.open(PATH, os.O_RDONLY | os.O_DIRECT)
rng = random.Random(0)

def read_at(buf, off):
    return os.preadv(fd, [buf], off)

def bench(req, qd, total):
    """Read `total` bytes as requests of `req` bytes (random aligned offsets), qd in flight; returns GB/s."""
    n = max(total // req, qd)
    offs = [rng.randrange(0, (SIZE - req) // req) * req for _ in range(n)]
    bufs = [mmap.mmap(-1, req) for _ in range(qd)]
    t0 = time.perf_counter()
    if qd == 1:
        for o in offs:
            read_at(bufs[0], o)
    else:
        with ThreadPoolExecutor(qd) as ex:
            list(ex.map(lambda io: read_at(bufs[io[0] % qd], io[1]), enumerate(offs)))
    dt = time.perf_counter() - t0
    return n * req / dt / 1e9, dt / n * 1e6

out = {}
for req, qd, total in [(4096, 1, 8 << 20), (4096, 8, 32 << 20), (131072, 1, 128 << 20), (131072, 4, 256 << 20),
                       (131072, 16, 512 << 20), (1 << 20, 1, 256 << 20), (1 << 20, 8, 512 << 20),
                       (1 << 20, 32, 768 << 20), (16 << 20, 1, 512 << 20), (16 << 20, 4, 768 << 20)]:
    gbps, us = bench(req, qd, total)
    out[f"{req}x{qd}"] = (gbps, us)
    print(f"req {req >> 10:6d} KiB  qd {qd:3d}:  {gbps:6.3f} GB/s   {us:9.1f} us per request", flush=True)
json.dump(out, open(PATH + ".json", "w"))
