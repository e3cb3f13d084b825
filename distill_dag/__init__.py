"""distill-dag: reasoning distillation as Dagster software-defined assets (pure core)."""

__version__ = "0.1.0"
