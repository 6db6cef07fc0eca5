# Allocates on the way back up a deep recursion (a tree built bottom-up).
import sys
sys.setrecursionlimit(5000)

def build(depth):
    if depth == 0:
        return []
    child = build(depth - 1)
    return [child, "x" * (depth % 50 + 10), {"d": depth}]

for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2000):
    build(200)
