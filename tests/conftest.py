"""Shared test settings: CPU only, hypothesis without deadlines (JAX compiles on first call), derandomized in CI."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import HealthCheck, settings  # noqa: E402

# "ci" (the default): derandomized, so every run draws the same examples and a test cannot pass or fail
# by chance; failing examples are printed (print_blob) so they can be replayed with @reproduce_failure.
# "thorough": a wider random search for local runs (HYPOTHESIS_PROFILE=thorough, see the README).
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=12,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=200,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
