"""Shared pytest setup for unit tests and nbval: quiet logs and the fast profile (scripts/run_tests.sh gives the unit
tests their own cache folder)."""

import os

os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("DREAMBOOTH_NB_FAST", "1")
