"""A small program with a leak, a temporary spike and a worker thread, to profile."""
import threading

_cache = []


def load_record(i):
    # Leaks: every record is kept in a module-level cache.
    record = {"id": i, "payload": bytearray(4096)}
    _cache.append(record)
    return record


def build_report(n):
    # Temporary: a large buffer that is freed before the function returns.
    scratch = bytearray(8 * 1024 * 1024)
    total = sum(len(load_record(i)["payload"]) for i in range(n))
    del scratch
    return total


def background():
    chunks = [bytes(64 * 1024) for _ in range(32)]
    return len(chunks)


worker = threading.Thread(target=background, name="background-worker")
worker.start()
print("report total:", build_report(2_000))
worker.join()
