"""Outside the servers: TorchServe and Triton launchers, the archive and repository builders, nginx fronts."""
