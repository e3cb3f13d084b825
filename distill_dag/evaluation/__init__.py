"""Evaluation of base vs distilled student: accuracy with intervals, test-time provenance."""
