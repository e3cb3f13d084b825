"""distill_dag/generation package."""
