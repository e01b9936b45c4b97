"""Evaluation: colour metrics, the held-out report during training, the evaluate script's
report and figures. Imports nothing from training or backends."""
