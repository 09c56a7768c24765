"""Server-facing tools: archive building, the TorchServe launcher, REST and gRPC clients."""
