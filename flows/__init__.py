"""Prefect flows: they only sequence and fan out the tasks in ``tasks/``; all logic lives in ``laionet``."""
