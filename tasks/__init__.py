"""Prefect tasks: thin wrappers around the laionet stage drivers (paths in, manifest dicts out)."""
