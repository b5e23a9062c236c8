"""The hypothesis settings profile of layerknn's property-based tests (fixed, reproducible budget).

Imported by the property test modules (not by conftest.py), which decorate each test with
``PROFILE``: examples are derived from the test itself (``derandomize``), so every run checks
the same cases, there is no per-example deadline (the first call may build caches), and the
example counts keep each module well under a minute on a 2-core machine.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "layerknn",
    deadline=None,
    derandomize=True,
    max_examples=1000,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile("layerknn")
