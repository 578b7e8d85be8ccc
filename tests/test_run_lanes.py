"""`tests/run_lanes.py`, `make test`'s runner: how it deals files to lanes and cuts lanes into
processes, and that a failing test anywhere fails the run."""

import subprocess
import sys
from pathlib import Path

import run_lanes


def test_deal_puts_the_longest_first_onto_the_emptier_lane():
    seconds = {"a.py": 5, "b.py": 4, "c.py": 3, "d.py": 3, "e.py": 1}
    lanes, weight = run_lanes.deal(sorted(seconds), seconds, 2)
    # a -> 1 (5), b -> 2 (4), c -> 2 (7), d -> 1 (8), e -> 2 (8)
    assert lanes == [(["a.py", "d.py"], 8), (["b.py", "c.py", "e.py"], 8)]
    # a file without a measured time counts as the median of the others
    lanes, weight = run_lanes.deal(["a.py", "new.py"], {"a.py": 2, "b.py": 6, "c.py": 9}, 2)
    assert weight["new.py"] == 6 and lanes == [(["new.py"], 6), (["a.py"], 2)]


def test_cut_keeps_the_order_and_makes_runs_of_about_equal_work():
    files = [f"t{i}.py" for i in range(6)]
    weight = dict(zip(files, (3, 1, 1, 1, 3, 1)))  # total 10, cut at 10/3 and 20/3
    runs = run_lanes.cut(files, weight, 3)
    assert runs == [["t0.py", "t1.py"], ["t2.py", "t3.py", "t4.py"], ["t5.py"]]
    assert run_lanes.cut(files, weight, 1) == [files]
    assert sum(run_lanes.cut(files[:2], weight, 5), []) == files[:2]  # more chunks than files


def _run(directory):
    script = Path(run_lanes.__file__)
    command = [sys.executable, str(script), "--tests-dir", str(directory), "--chunks", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=directory, timeout=300)
    return proc.returncode, proc.stdout.splitlines()[-1]


def test_a_failing_test_in_any_lane_fails_the_run(tmp_path):
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    rc, summary = _run(tmp_path)
    assert rc == 0 and summary.startswith("passed: 1 tests, 0 failed"), summary
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert 1 + 1 == 3\n")
    rc, summary = _run(tmp_path)
    assert rc == 1 and summary.startswith("FAILED: 2 tests, 1 failed"), summary
