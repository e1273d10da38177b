"""Samples used by the README, `make demo` and the e2e tests."""
