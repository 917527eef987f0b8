"""pytest plugin: in the test run a skip is a failure unless the test says it is expected.

A missing dev dependency (`pytest.importorskip("torch")`) or too few fake devices would
otherwise turn whole files grey while CI stays green. Only tests marked
`@pytest.mark.gpu` (skipped here when JAX sees no GPU) or `@pytest.mark.expected_skip`
may skip; `-ra` lists them with their reasons. ZOO_ALLOW_SKIPS=1 turns the rule off
(a dev machine without the `dev` extra).
"""

from __future__ import annotations

import os

import pytest

ALLOWED_MARKERS = ("gpu", "expected_skip")
HINT = ("skips are failures in the test run: install the dev extra (pip install -e '.[dev]'), "
        "run with the device count tests/conftest.py sets, or mark the test @pytest.mark.expected_skip "
        "(or @pytest.mark.gpu) if this skip is expected on some machines; ZOO_ALLOW_SKIPS=1 allows all skips")


def _strict() -> bool:
    return os.environ.get("ZOO_ALLOW_SKIPS", "") not in ("1", "true", "yes")


def _has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend (or JAX_PLATFORMS=cpu)
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU; skipped (and listed) where JAX sees none")
    config.addinivalue_line("markers", "expected_skip(reason): may skip on some machines without failing the run")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _has_gpu():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a GPU (expected on a CPU-only machine)"))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    allowed = any(item.get_closest_marker(name) is not None for name in ALLOWED_MARKERS)
    if report.skipped and not hasattr(report, "wasxfail") and not allowed and _strict():
        report.outcome = "failed"
        report.longrepr = f"unexpected skip ({_skip_reason(report)}): {HINT}"
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector):
    # a module-level importorskip skips the whole file at collection: fail it instead
    report = yield
    if report.skipped and _strict():
        report.outcome = "failed"
        report.longrepr = f"unexpected skip of {collector.nodeid} ({_skip_reason(report)}): {HINT}"
    return report
