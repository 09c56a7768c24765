"""What serves: ``launch/`` (outside the servers: launchers, archive and repository builders, nginx fronts),
``client/`` (clients and keys), ``torchserve_handlers/`` (inside TorchServe), ``triton_models/`` (inside Triton)."""
