# Large buffers: every one goes to malloc/mmap directly.
bufs = []
for i in range(20_000):
    b = bytearray(256 * 1024)
    if i % 50 == 0:
        bufs.append(b)
del bufs
