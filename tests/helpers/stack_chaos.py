"""Random calls, returns, yields, exceptions, generators, coroutines and traced calls,
allocating everywhere, under memray.Tracker, on two threads.

tests/test_stack_exactness.py runs it with MEMRAY_CHECK_STACKS=1: the payload then compares
every stack it writes with a full walk of the frame chain and prints one line per tracker
with the counts.

argv: OUTPUT SEED TRACE_PYTHON_ALLOCATORS(0/1) START_DEPTH STEPS
Tracking starts START_DEPTH frames down (frames entered before tracking), and a second
tracker runs after the first (a new capture: nothing of the first may be reused).
"""
import random
import sys
import threading
import types

import memray

OUT, SEED, TPA, START_DEPTH, STEPS = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
MAX_DEPTH = 150
SIZES = (24, 600, 5000)  # pymalloc, and two that reach malloc in default mode


class Boom(Exception):
    pass


class Walker:
    def __init__(self, seed, steps):
        self.rng = random.Random(seed)
        self.steps = steps
        self.kept = []  # suspended generators and coroutines, resumed later from elsewhere
        self.keep = []

    def alloc(self):
        block = bytearray(self.rng.choice(SIZES))
        if self.rng.random() < 0.3:
            self.keep.append(block)
        if len(self.keep) > 50:
            del self.keep[: self.rng.randrange(50)]
        return block

    def more(self):
        self.steps -= 1
        return self.steps > 0

    def node(self, depth, width):
        """One frame doing up to `width` random things, from a few call sites."""
        rng = self.rng
        for _ in range(rng.randrange(1, width + 1)):
            if not self.more():
                break
            r = rng.random()
            if r < 0.22:
                self.alloc()
            elif r < 0.40 and depth < MAX_DEPTH:
                self.node(depth + 1, width)
            elif r < 0.47 and depth < MAX_DEPTH:
                try:
                    self.explode(depth + 1, rng.randrange(1, 30))
                except Boom:
                    self.alloc()
            elif r < 0.55:
                self.kept.append(self.gen(depth))
                self.resume()
            elif r < 0.62:
                self.kept.append(self.coro(depth))
                self.resume()
            elif r < 0.75:
                self.resume()
            elif r < 0.80:
                return self.alloc()
            elif r < 0.90 and depth < MAX_DEPTH:
                self.deep(depth + 1, rng.randrange(1, 60))
                self.alloc()
            elif r < 0.905:
                self.traced(depth)
            else:
                self.node(depth + 1, 1) if depth < MAX_DEPTH else self.alloc()
        return self.alloc()

    def deep(self, depth, n):
        """A straight chain down, allocating on the way back up (each caller's line moves)."""
        if n == 0 or depth >= MAX_DEPTH or not self.more():
            for _ in range(self.rng.randrange(1, 6)):
                self.alloc()
            return
        self.deep(depth + 1, n - 1)
        self.alloc()
        if self.rng.random() < 0.2:
            self.deep(depth + 1, self.rng.randrange(n))

    def explode(self, depth, n):
        """Down n frames, then an exception that unwinds them all."""
        self.alloc()
        if n == 0 or depth >= MAX_DEPTH:
            raise Boom()
        if self.rng.random() < 0.3:
            self.node(depth + 1, 2)
        self.explode(depth + 1, n - 1)

    def gen(self, depth):
        yield self.alloc()
        for _ in range(self.rng.randrange(4)):
            self.node(depth + 1, 2)
            yield self.alloc()
        if self.rng.random() < 0.2:
            raise Boom()
        yield self.alloc()

    async def coro(self, depth):
        self.alloc()
        await Pause(self)
        if self.rng.random() < 0.5 and depth < MAX_DEPTH:
            await self.coro(depth + 1)
        self.node(depth + 1, 2)
        await Pause(self)
        return self.alloc()

    def resume(self):
        if not self.kept:
            return
        it = self.kept.pop(self.rng.randrange(len(self.kept)))
        try:
            if isinstance(it, types.CoroutineType):
                it.send(None)
            else:
                next(it)
        except (StopIteration, Boom):
            return
        if self.rng.random() < 0.8:
            self.kept.append(it)
        else:
            it.close()

    def traced(self, depth):
        """A few calls under a Python trace function that itself calls and allocates: the
        interpreter reports no frame exit while it runs."""
        walker = self

        def helper(n):
            walker.alloc()
            if n:
                helper(n - 1)

        def tracer(frame, event, arg):
            if event == "call":
                helper(walker.rng.randrange(20))
            return None

        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            self.node(depth + 1, 2) if depth < MAX_DEPTH else self.alloc()
        finally:
            sys.settrace(previous)

    def run(self):
        while self.more():
            self.node(0, 4)
        for it in self.kept:
            it.close()


class Pause:
    def __init__(self, walker):
        self.walker = walker

    def __await__(self):
        yield self.walker.alloc()


def track(output, seed):
    with memray.Tracker(output, trace_python_allocators=TPA):
        other = threading.Thread(target=Walker(seed + 1, STEPS // 2).run)
        other.start()
        Walker(seed, STEPS).run()
        other.join()


def descend(n, output, seed):
    """Frames entered before tracking starts, each on its own line."""
    if n == 0:
        track(output, seed)
        return
    bytearray(10)
    descend(n - 1, output, seed)


sys.setrecursionlimit(10_000)
descend(START_DEPTH, OUT, SEED)
track(OUT + ".2", SEED + 2)
