"""Fine-tuning the student: the shared training cycle (train.py), the objectives it trains with
(objectives/: sft today), and data-parallel launch (launch.py, worker.py)."""
