"""Dump a capture file as JSON using a reader (Memray 1.20's memray.FileReader).

Run with an oracle virtualenv's python:
    python oracle_dump.py CAPTURE [all] [hwm] [leaks] [snapshots] [sizes=N,M,...]

Prints one JSON object: {"metadata": {...}, "<mode>": [records] | {"error": ...}}.
Records: tid, thread_name, address, size, allocator (AllocatorType int),
n_allocations, stack ([[function, filename, lineno], ...] innermost first, or
null for deallocations, whose stacks are not captured).
With sizes=..., "all" keeps only records of those sizes (fast on big captures)
and "all_counts" gives {allocator: number of records} over every record.
"""
import json
import sys

import memray


def _stack(record):
    try:
        return [list(frame) for frame in record.stack_trace()]
    except NotImplementedError:
        return None


def _record(record):
    return {
        "tid": record.tid,
        "thread_name": record.thread_name,
        "address": record.address,
        "size": record.size,
        "allocator": int(record.allocator),
        "n_allocations": record.n_allocations,
        "stack": _stack(record),
    }


def _guarded(func):
    try:
        return func()
    except Exception as exc:  # reported to the test, which decides
        return {"error": "%s: %s" % (type(exc).__name__, exc)}


def main():
    path = sys.argv[1]
    sizes = None
    modes = []
    for arg in sys.argv[2:]:
        if arg.startswith("sizes="):
            sizes = {int(x) for x in arg[len("sizes="):].split(",") if x}
        else:
            modes.append(arg)
    modes = modes or ["all"]
    out = {}
    with memray.FileReader(path) as reader:
        md = reader.metadata
        out["metadata"] = {
            "start_time": md.start_time.timestamp(),
            "end_time": md.end_time.timestamp(),
            "total_allocations": md.total_allocations,
            "total_frames": md.total_frames,
            "peak_memory": md.peak_memory,
            "command_line": md.command_line,
            "pid": md.pid,
            "main_thread_id": md.main_thread_id,
            "python_allocator": md.python_allocator,
            "has_native_traces": md.has_native_traces,
            "trace_python_allocators": md.trace_python_allocators,
            "file_format": int(md.file_format),
        }
        for mode in modes:
            if mode == "all" and sizes is not None:
                def filtered():
                    counts, kept = {}, []
                    for r in reader.get_allocation_records():
                        counts[int(r.allocator)] = counts.get(int(r.allocator), 0) + 1
                        if r.size in sizes:
                            kept.append(_record(r))
                    out["all_counts"] = counts
                    return kept

                out[mode] = _guarded(filtered)
            elif mode == "all":
                out[mode] = _guarded(
                    lambda: [_record(r) for r in reader.get_allocation_records()]
                )
            elif mode == "hwm":
                out[mode] = _guarded(
                    lambda: [
                        _record(r)
                        for r in reader.get_high_watermark_allocation_records(
                            merge_threads=False
                        )
                    ]
                )
            elif mode == "leaks":
                out[mode] = _guarded(
                    lambda: [
                        _record(r)
                        for r in reader.get_leaked_allocation_records(merge_threads=False)
                    ]
                )
            elif mode == "snapshots":
                out[mode] = _guarded(
                    lambda: [
                        [s.time, s.rss, s.heap] for s in reader.get_memory_snapshots()
                    ]
                )
            else:
                raise SystemExit("unknown mode %r" % mode)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
