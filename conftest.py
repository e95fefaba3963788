"""Shared pytest setup for unit tests and nbval: quiet logs, a private cache, the fast profile."""

import os

os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("DREAMBOOTH_NB_FAST", "1")
