"""Fine-tuning the student on the filtered dataset (SFT with TRL, LoRA or full)."""
