"""How close a sampled capture's estimates are to the full capture of the same run.

Run with a Python that has Memray 1.20 installed: its FileReader reads both captures, so
the figures do not depend on our reporter.

    python sampling_accuracy.py FULL SAMPLED [--min-share 0.01]

prints one JSON object: for the bytes live at the high-water mark ("peak") and at the end
("leaked"), per allocation site (the innermost Python frame) holding at least
`min-share` of the full capture's bytes: the full figure, the estimate, and the relative
error. `errors()` is the same as a function, for the benchmark driver.

mmap records are left out: sampling records them in full, so they have no sampling
error, and the line they land on is not reproducible from run to run (pymalloc maps an
arena on whichever allocation finds the last one full, and the tracker's own start-up
shifts that), which would show as an error of sampling when it is not one.
"""
import argparse
import json
import sys
from collections import defaultdict

import memray


def _site(record):
    stack = record.stack_trace(max_stacks=1)
    if not stack:
        return "<no Python frame>"
    function, filename, line = stack[0]
    return "%s:%d %s" % (filename, line, function)


def site_bytes(path):
    """{"peak": {site: bytes}, "leaked": {site: bytes}} read by Memray 1.20."""
    out = {}
    with memray.FileReader(path) as reader:
        for name, records in (
            ("peak", reader.get_high_watermark_allocation_records(merge_threads=True)),
            ("leaked", reader.get_leaked_allocation_records(merge_threads=True)),
        ):
            sums = defaultdict(int)
            for record in records:
                if record.allocator != memray.AllocatorType.MMAP:
                    sums[_site(record)] += record.size
            out[name] = dict(sums)
    return out


def errors(full_path, sampled_path, min_share=0.01):
    full, sampled = site_bytes(full_path), site_bytes(sampled_path)
    result = {}
    for name in ("peak", "leaked"):
        total = sum(full[name].values())
        rows = []
        for site, exact in sorted(full[name].items(), key=lambda kv: -kv[1]):
            if total == 0 or exact < min_share * total:
                continue
            estimate = sampled[name].get(site, 0)
            rows.append({"site": site, "full": exact, "estimate": estimate,
                         "error": (estimate - exact) / exact if exact else 0.0})
        result[name] = {"total_full": total, "total_estimate": sum(sampled[name].values()), "sites": rows}
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("full")
    p.add_argument("sampled")
    p.add_argument("--min-share", type=float, default=0.01)
    args = p.parse_args()
    json.dump(errors(args.full, args.sampled, args.min_share), sys.stdout)
    print()


if __name__ == "__main__":
    main()
