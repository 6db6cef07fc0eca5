# handler_depth.py's request handler as coroutines: the chain of layers is `async def`s
# awaited ~80 deep inside an asyncio event loop, a few requests in flight at once, and the
# handler awaits (a database or network wait) every 16 rows, so the whole await chain is
# suspended and resumed while other requests' chains run.
#
#   asyncio_handler.py [REQUESTS] [DEPTH]
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handler_depth import ROWS_PER_REQUEST, build_stack  # noqa: E402

IN_FLIGHT = 4


async def handle(request):
    rows = []
    for i in range(request["rows"]):
        rows.append({"id": i, "name": "user-%d" % i, "tags": ["staff", str(i)]})
        if i % 16 == 15:
            await asyncio.sleep(0)
    return len(",".join([row["name"] for row in rows]))


async def serve(top, requests):
    total = 0
    for start in range(0, requests, IN_FLIGHT):
        batch = [top({"path": "/users/%d" % n, "rows": ROWS_PER_REQUEST})
                 for n in range(start, min(start + IN_FLIGHT, requests))]
        total += sum(await asyncio.gather(*batch))
    return total


if __name__ == "__main__":
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 8_000
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 80
    sys.setrecursionlimit(max(1000, depth + 200))
    asyncio.run(serve(build_stack(depth, handle, is_async=True), requests))
