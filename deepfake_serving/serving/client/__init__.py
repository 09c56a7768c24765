"""Clients of both servers with retries (REST, gRPC, Triton), the servers' key files, TorchServe's gRPC stubs."""
