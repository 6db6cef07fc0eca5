# A request handler at the bottom of a realistic stack: a chain of distinct functions (a web
# framework's middleware, routing, view, ORM and serializer layers) about 80 frames deep,
# each request building small dicts, strings and lists at the bottom. Real services run
# 50-150 frames deep; this is where the cost of capturing a stack at every allocation shows
# (issue #17). The chain is generated, so its depth is a parameter:
#
#   handler_depth.py [REQUESTS] [DEPTH]
#
# DEPTH counts the frames of the chain (its layers and the handler); the module, serve()
# and the tool's runner add a few more below it.
import sys

# What a request passes through in a typical web stack, outermost first: the names repeat
# (with a numbered suffix) until the chain is as deep as asked.
LAYERS = [
    "wsgi_app", "server_handler", "exception_middleware", "security_middleware",
    "session_middleware", "auth_middleware", "csrf_middleware", "locale_middleware",
    "cache_middleware", "tracing_span", "router_dispatch", "url_resolver", "view_decorator",
    "permission_check", "atomic_transaction", "view_method", "service_call", "repository",
    "queryset_iter", "orm_compiler", "serializer_field", "validator",
]
ROWS_PER_REQUEST = 64


def build_stack(depth, handler, is_async=False):
    """Return the top of a chain of `depth` distinct functions whose last one is `handler`.

    Each layer is its own function (own code object, own name), as in a real stack, rather
    than one function recursing: stack capture may cache or compare code objects, and a
    single recursive function would flatter it.
    """
    assert depth >= 1
    names = ["%s_%03d" % (LAYERS[i % len(LAYERS)], i) for i in range(depth - 1)] + [handler.__name__]
    kw = ("async def", "await ") if is_async else ("def", "")
    src = []
    for name, callee in zip(names, names[1:]):
        src.append("%s %s(request):\n    return %s%s(request)\n" % (kw[0], name, kw[1], callee))
    namespace = {handler.__name__: handler}
    exec(compile("".join(src), "<generated handler stack>", "exec"), namespace)
    return namespace[names[0]]


def handle(request):
    rows = []
    for i in range(request["rows"]):
        rows.append({"id": i, "name": "user-%d" % i, "tags": ["staff", str(i)]})
    # The response body outgrows pymalloc's 512-byte blocks: a malloc that default mode
    # records too (it sees no small object).
    return len(",".join([row["name"] for row in rows]))


def serve(top, requests):
    total = 0
    for n in range(requests):
        total += top({"path": "/users/%d" % n, "rows": ROWS_PER_REQUEST})
    return total


if __name__ == "__main__":
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 80
    sys.setrecursionlimit(max(1000, depth + 200))
    serve(build_stack(depth, handle), requests)
