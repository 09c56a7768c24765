"""Judging answers: metrics of labelled folders (the rollout's gate, training), overlay video and plots."""
