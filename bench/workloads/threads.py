# Four threads allocating at once: exercises the writer's lock and per-thread stacks.
import threading


def work(n):
    keep = []
    for i in range(n):
        keep.append([i] * 16)
        if len(keep) > 1000:
            keep.clear()


threads = [threading.Thread(target=work, args=(400_000,)) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
