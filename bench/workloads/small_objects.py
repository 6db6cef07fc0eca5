# Many small, short-lived and long-lived objects: the common Python allocation pattern.
keep = []
for i in range(1_500_000):
    d = {"i": i, "s": str(i), "t": (i, i + 1)}
    if i % 10 == 0:
        keep.append(d)
    lst = [i] * 8
del keep
