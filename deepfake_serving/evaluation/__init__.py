"""Judging answers: metrics of labelled folders (the rollout's gate, training), overlay video and plots."""

# What a rollout gate may compare (``Evaluation``'s fields; here so the command line need not import sklearn)
GATE_METRICS = ("f1", "accuracy", "roc_auc", "average_precision", "recall", "precision", "specificity", "eer", "ece")
LOWER_IS_BETTER = ("eer", "ece")
