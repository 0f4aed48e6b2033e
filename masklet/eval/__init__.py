"""Evaluation of masklets against ground truth: DAVIS J&F and prediction-to-GT matching."""
