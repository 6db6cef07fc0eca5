# Allocations at the bottom of deep stacks: the cost of stack capture grows with depth.
import sys

sys.setrecursionlimit(5000)


def descend(depth):
    if depth == 0:
        return [bytearray(64) for _ in range(200)]
    return descend(depth - 1)


for _ in range(1_500):
    descend(400)
