# An extension module: numpy allocates its data buffers in C.
import numpy as np

total = 0.0
for i in range(6_000):
    a = np.ones((128, 128))
    b = a @ a.T if i % 100 == 0 else a * 2.0
    total += float(b[0, 0])
