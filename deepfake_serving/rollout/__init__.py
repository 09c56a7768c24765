"""A/B model-version rollout: register a candidate next to the serving version, warm it up, compare
in shadow and on a labelled set, give it a share of traffic under guard rails, then promote or roll
back — on TorchServe or Triton, every step in an append-only audit log."""
