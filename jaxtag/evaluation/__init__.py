"""Evaluation: metrics (the paper's MAA and the field's ROC-AUC, PR-AUC, F1), evaluating a
checkpoint on a split, and reports comparing runs."""
