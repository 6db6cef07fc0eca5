"""Reporter benchmark input: about 2 * N malloc/free records (N from argv, default 5M)
over 20 stack depths, with a live set that rises and falls so the peak is not trivial."""
import sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
DEPTHS = 20


def leaf(n):
    keep = []
    for i in range(n):
        # Above pymalloc's 512-byte limit: every object is one malloc and one free.
        keep.append(bytearray(600 + (i % 7) * 64))
        if len(keep) > 2000:
            keep.clear()


def descend(k, n):
    if k == 0:
        leaf(n)
    else:
        descend(k - 1, n)


for depth in range(DEPTHS):
    descend(depth, N // DEPTHS)
