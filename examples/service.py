"""A small pre-fork service to attach to: a master and two workers (os.fork, as gunicorn
does) that handle jobs in a loop. Each job builds a response (temporary memory), and
one code path keeps what it loaded in a module-level cache: the leak to find.

    python examples/service.py [WORKERS]    # runs until SIGTERM or Ctrl-C
"""
import os
import signal
import sys
import time

_cache = {}


def load_user(user_id):
    # Leaks: every user ever loaded stays in the cache, with its avatar.
    user = _cache.get(user_id)
    if user is None:
        user = {"id": user_id, "avatar": bytearray(16 * 1024)}
        _cache[user_id] = user
    return user


def render_page(user):
    # Temporary: a response buffer, freed when the job ends.
    body = bytearray(256 * 1024)
    body[:8] = user["id"].to_bytes(8, "little")
    return len(body)


def handle_job(n):
    return render_page(load_user(n))


def worker():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    n = 0
    while True:
        handle_job(n)
        n += 1
        time.sleep(0.001)


def main():
    workers = []
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
        pid = os.fork()
        if pid == 0:
            worker()
        workers.append(pid)
    print("service: master %d, workers %s" % (os.getpid(), " ".join(map(str, workers))), flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        while not stopping:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    for pid in workers:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
