"""distill_dag/provenance package."""
