"""Sampling accuracy input: allocation sites with different mixes of block sizes, some
freed before the end and some never, plus temporaries that are gone before the peak.
Deterministic: sizes come from a seeded generator (argv[1], default 1234); argv[2]
scales every site (default 1.0)."""
import random
import sys

rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 1234)
SCALE = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0


def small_blocks(total):
    # Above pymalloc's 512 bytes, far below any sampling interval: rarely sampled each.
    out, n = [], 0
    while n < total:
        out.append(bytearray(rng.randint(600, 3000)))
        n += len(out[-1])
    return out


def medium_blocks(total):
    out, n = [], 0
    while n < total:
        out.append(bytearray(rng.randint(16 << 10, 256 << 10)))
        n += len(out[-1])
    return out


def large_blocks(total):
    # Far above any sampling interval: nearly always sampled, weighing their size.
    out, n = [], 0
    while n < total:
        out.append(bytearray(rng.randint(1 << 20, 8 << 20)))
        n += len(out[-1])
    return out


def temporaries(total):
    n = 0
    while n < total:
        n += len(bytes(rng.randint(1000, 100_000)))


MB = int(1e6 * SCALE)
small = small_blocks(120 * MB)
temporaries(200 * MB)
medium = medium_blocks(150 * MB)
large = large_blocks(100 * MB)
more_small = small_blocks(40 * MB)
# The peak is here. Half of the small and medium blocks go; the rest leak.
del small[::2]
del medium[::2]
large.clear()
temporaries(50 * MB)
