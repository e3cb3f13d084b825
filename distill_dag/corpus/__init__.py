"""distill_dag/corpus package."""
