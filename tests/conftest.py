import os
import sys

# Integration tests run supervisord with the interpreter running pytest; make sure the
# package and the test apps are importable from the workers' working folder too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "tests", "apps")
sys.path.insert(0, APPS)
