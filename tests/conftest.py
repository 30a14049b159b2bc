"""Put the repository root on sys.path so tests import the packages directly."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

try:   # property tests: no per-example time limit nor data-generation speed check (a loaded CI machine is slow; speed lives in `make bench`)
    from hypothesis import HealthCheck, settings as _hypothesis_settings
except ImportError:   # the kernel and e2e tiers do not need hypothesis
    pass
else:
    _hypothesis_settings.register_profile("secnet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    _hypothesis_settings.load_profile("secnet")
