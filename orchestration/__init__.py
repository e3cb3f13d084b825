"""Orchestration beyond single assets: the stale engine, sensors, the schedule, automation."""
