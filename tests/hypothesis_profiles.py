"""Hypothesis profiles: "deep" for local runs, "ci" when CI=true.

Locally every property test tries the number of examples it asks for (``examples(n)`` is n):
that is the deep run, a few minutes of generated specs, manifests and YAML documents. CI runs
the whole suite on several interpreters per commit, so there each test tries a fifth of its
examples (at least 10): every property is still exercised on every commit, and the many CI
runs together cover more ground than one deep run. Hypothesis's example database
(``.hypothesis/``) replays locally whatever failed before, in either profile.

``HYPOTHESIS_PROFILE=deep`` (or ``ci``) chooses explicitly; tests/conftest.py loads the
profile before any test module is imported.
"""

import os

from hypothesis import settings

CI_SHARE = 5  # in CI, a test asking for n examples tries n // CI_SHARE (at least CI_MIN)
CI_MIN = 10

settings.register_profile("deep", deadline=None)
# print_blob: a CI failure prints the @reproduce_failure line to replay it anywhere.
settings.register_profile("ci", deadline=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() == "true" else "deep")


def load() -> None:
    settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """How many examples a test that asks for ``n`` tries under the loaded profile."""
    return max(CI_MIN, n // CI_SHARE) if PROFILE == "ci" else n
