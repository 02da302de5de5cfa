"""Support for the property-based tests ``tests/test_fuzz_*.py`` (Hypothesis, schemathesis)."""
