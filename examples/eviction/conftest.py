"""Registers the team's eviction as a change kind, so gates in this folder may also say `key_norm_eviction: {...}`."""

from key_norm_eviction import KeyNormEviction


def pytest_longctx_register_changes(register):
    register(KeyNormEviction)
