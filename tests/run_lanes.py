"""`make test`'s runner: the suite in parallel lanes, each lane a few pytest processes in turn.

Usage: python tests/run_lanes.py [--lanes 2] [--chunks 3] [--record] [--tests-dir DIR]
                                [PYTEST ARGS ...]

Why lanes: the suite is mostly Python and tracing, one core busy at a time (one process: 36.9
min of CPU in 34.5 min of wall time on 2 cores), so two processes side by side take about
two thirds of the time. Why several processes per lane: a pytest process's memory only grows
(TensorFlow and XLA keep the traced functions and compiled programs of every model a test
builds; `keras.backend.clear_session()`, `gc.collect()`, `malloc_trim` and `MALLOC_ARENA_MAX`
gave back under 10%): two pytest-xdist workers over the whole suite were OOM-killed at 13 GB
each on a 24 GB machine. Files are dealt by their measured seconds (`tests/durations.json`,
longest first onto the lane with less work; a file not in it counts as the median), and each
lane's files are cut into `--chunks` processes of about equal work, run one after another.

Every process applies tests/conftest.py on its own (a missing reference framework or a
forbidden skip fails that process), and the run fails if any process does. `--record`
rewrites `tests/durations.json` from this run's per-test times (pytest's JUnit XML).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TESTS = Path(__file__).resolve().parent
DURATIONS = TESTS / "durations.json"


def test_files(directory):
    return sorted(p.name for p in Path(directory).glob("test_*.py"))


def deal(files, seconds, lanes):
    """Longest first onto the lane with the least work so far: `lanes` lists of files."""
    default = statistics.median(seconds.values()) if seconds else 1.0
    weight = {f: seconds.get(f, default) for f in files}
    loads, dealt = [0.0] * lanes, [[] for _ in range(lanes)]
    for f in sorted(files, key=lambda f: (-weight[f], f)):
        lane = loads.index(min(loads))
        dealt[lane].append(f)
        loads[lane] += weight[f]
    return [(lane_files, load) for lane_files, load in zip(dealt, loads)], weight


def cut(files, weight, chunks):
    """`files` in order, cut into at most `chunks` runs of about equal total weight."""
    total, runs, current, done = sum(weight[f] for f in files), [], [], 0.0
    for f in files:
        current.append(f)
        done += weight[f]
        if done >= total * (len(runs) + 1) / chunks and len(runs) < chunks - 1:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def junit_totals(path):
    """(tests, failures + errors, skipped, {file: seconds}) of one JUnit XML file."""
    suite = ElementTree.parse(path).getroot().find("testsuite")
    per_file = {}
    for case in suite.iter("testcase"):
        name = case.get("classname", "").split(".")[-1] + ".py"
        per_file[name] = per_file.get(name, 0.0) + float(case.get("time", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return int(suite.get("tests", 0)), failed, int(suite.get("skipped", 0)), per_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=3, help="pytest processes per lane")
    parser.add_argument("--record", action="store_true", help="rewrite tests/durations.json")
    parser.add_argument("--tests-dir", type=Path, default=TESTS, help=argparse.SUPPRESS)
    args, pytest_args = parser.parse_known_args()
    if args.lanes < 1 or args.chunks < 1:
        parser.error(f"--lanes and --chunks must be >= 1, got {args.lanes}, {args.chunks}")

    durations = args.tests_dir / DURATIONS.name
    seconds = json.loads(durations.read_text()) if durations.exists() else {}
    lanes, weight = deal(test_files(args.tests_dir), seconds, args.lanes)
    start = time.time()
    lock, results = threading.Lock(), []

    with tempfile.TemporaryDirectory() as tmp:

        def run_lane(index, files):
            for part, chunk in enumerate(cut(files, weight, args.chunks)):
                tag = f"lane {index + 1} part {part + 1}"
                xml, log = Path(tmp, f"{index}-{part}.xml"), Path(tmp, f"{index}-{part}.log")
                command = [sys.executable, "-m", "pytest", "-q", f"--junitxml={xml}"]
                command += [str(args.tests_dir / f) for f in chunk] + pytest_args
                began = time.time()
                with open(log, "w") as out:
                    rc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
                lines = log.read_text().splitlines()
                with lock:
                    results.append((tag, rc, xml))
                    print(f"[{tag}] {len(chunk)} files, {time.time() - began:.0f} s:", end=" ")
                    print(lines[-1] if lines else "(no output)", flush=True)
                    if rc != 0:  # the process's own report, failures and summary
                        print("\n".join(lines[-200:]), flush=True)

        threads = [
            threading.Thread(target=run_lane, args=(i, files)) for i, (files, _) in enumerate(lanes)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        tests = failed = skipped = 0
        measured = {}
        for tag, rc, xml in results:
            if not xml.exists():  # the process died before writing its report
                print(f"[{tag}] exit status {rc}, no report", flush=True)
                failed += 1
                continue
            n, f, s, per_file = junit_totals(xml)
            tests, failed, skipped = tests + n, failed + f, skipped + s
            measured.update(per_file)
    ok = all(rc == 0 for _, rc, _ in results) and len(results) > 0
    elapsed = time.time() - start
    print(
        f"{'passed' if ok else 'FAILED'}: {tests} tests, {failed} failed, {skipped} skipped,"
        f" {len(results)} processes in {args.lanes} lanes, {elapsed:.0f} s ({elapsed / 60:.1f} min)"
    )
    if args.record and ok:
        durations.write_text(json.dumps(dict(sorted(measured.items())), indent=1) + "\n")
        print(f"wrote {durations}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
