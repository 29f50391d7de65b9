import os
import sys

# Integration tests run supervisord with the interpreter running pytest; make sure the
# package and the test apps are importable from the workers' working folder too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "tests", "apps")
sys.path.insert(0, APPS)

# Before any test module: the "ci" Hypothesis profile when CI=true, else "deep" (tests/hypothesis_profiles.py).
from .hypothesis_profiles import load as _load_hypothesis_profile  # noqa: E402

_load_hypothesis_profile()
