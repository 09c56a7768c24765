"""Training a variant with its recipe: faces from labelled data, the loop, checkpoints, tracking."""
