"""Test session set-up, and the rule that a test run without its reference frameworks fails.

Parity is the package's main promise, and every parity test needs timm (and torch; the
Hugging Face ones transformers). A missing or broken install would otherwise turn those tests
into skips and the run into a pass that tested nothing. So:

- the reference frameworks are imported here, torch first (importing it after TensorFlow
  segfaults with TF 2.21 / torch 2.14), and an import failure is recorded, not swallowed;
- at the end of the session, a missing reference framework, or a skip of a test that needs one
  (or of any test in a parity file), fails the run with a message saying which and why.

`KERAS_VIT_ALLOW_MISSING_REFERENCES=1` turns those failures back into warnings, for a developer
who runs a few tests without the `test` extra; `make test` and CI never set it.
"""

import importlib
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# the reference frameworks, in import order: torch (via torchvision/timm) before TensorFlow
REFERENCE_PACKAGES = ("torch", "torchvision", "timm", "transformers")
# files whose every test compares with a reference framework: a skip there is never allowed
PARITY_FILES = ("_parity.py", "test_mutations.py", "test_convert_formats.py")
_ALLOW_ENV = "KERAS_VIT_ALLOW_MISSING_REFERENCES"

MISSING = {}
for _name in REFERENCE_PACKAGES:
    try:
        importlib.import_module(_name)
    except Exception as err:  # ImportError, or a broken install failing at import time
        MISSING[_name] = f"{type(err).__name__}: {err}"

_FORBIDDEN_SKIPS = []
_FIGURES = []  # (test id, line): the measured differences tests print ("max |...")


def pytest_addoption(parser):
    parser.addoption(
        "--figures",
        action="store_true",
        help="list the measured differences (lines with 'max |') printed by passing tests",
    )


def _needs_reference(report):
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report)
    in_parity_file = report.nodeid.split("::")[0].endswith(PARITY_FILES)
    names_package = any(f"'{p}" in reason or f"{p} " in reason for p in REFERENCE_PACKAGES)
    return in_parity_file or names_package, reason


def pytest_runtest_logreport(report):
    _record_skip(report)
    if report.when == "call" and report.passed:
        _FIGURES.extend(
            (report.nodeid, ln) for ln in report.capstdout.splitlines() if "max |" in ln
        )


def pytest_collectreport(report):  # a module-level importorskip skips the whole file
    _record_skip(report)


def _record_skip(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        needs, reason = _needs_reference(report)
        if needs:
            _FORBIDDEN_SKIPS.append((report.nodeid, reason))


def _problems():
    lines = [
        f"reference framework {name} cannot be imported ({why})" for name, why in MISSING.items()
    ]
    lines += [f"skipped: {nodeid} ({reason})" for nodeid, reason in _FORBIDDEN_SKIPS]
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if _problems() and not os.environ.get(_ALLOW_ENV) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    if config.getoption("--figures") and _FIGURES:
        terminalreporter.section("measured figures (passing tests)")
        for nodeid, line in _FIGURES:
            terminalreporter.write_line(f"{nodeid.split('::')[0]}: {line.strip()}")
    problems = _problems()
    if not problems:
        return
    allowed = bool(os.environ.get(_ALLOW_ENV))
    terminalreporter.section(
        "reference frameworks: "
        + ("missing (allowed by " + _ALLOW_ENV + ")" if allowed else "FAILED")
    )
    for line in problems:
        terminalreporter.write_line(line)
    if not allowed:
        terminalreporter.write_line(
            "The parity tests need timm, torch and transformers (pip install -e '.[test]'); "
            f"a run that skips them proves nothing, so it fails. Set {_ALLOW_ENV}=1 to run a "
            "subset without them."
        )
