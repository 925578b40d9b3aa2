"""Downstream evaluation: LAMBADA-style last-word prediction and the GLUE fine-tuning protocol."""
