"""Run many Memray CLI commands in one process of an oracle venv.

    python oracle_cli.py JOBS.json RESULTS.json

JOBS.json is a list of {"argv": [...], "cwd": DIR, "columns": N or null, "script": PATH
or null}: `argv` goes to Memray's `memray.commands.main` (what `python -m memray ARGV`
runs), or, with `script`, to that file run as `__main__`. RESULTS.json gets one
{"returncode", "stdout", "stderr"} per job, in order.

Starting Memray's CLI costs about half a second (its imports), and a capture is compared
on about thirty reports: one process per capture instead of one per report. Each command
sees what a fresh `python -m memray` would: COLUMNS set or unset, a non-terminal stdout,
its own working directory.
"""
import contextlib
import io
import json
import os
import runpy
import sys


def run_job(job):
    os.chdir(job["cwd"])
    os.environ.pop("COLUMNS", None)
    if job.get("columns"):
        os.environ["COLUMNS"] = str(job["columns"])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved_argv, saved_path = sys.argv, sys.path[:]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if job.get("script"):
                sys.argv = [job["script"], *job["argv"]]
                runpy.run_path(job["script"], run_name="__main__")
            else:
                from memray.commands import main

                code = main(job["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path
    return {"returncode": code or 0, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    results = [run_job(job) for job in jobs]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
