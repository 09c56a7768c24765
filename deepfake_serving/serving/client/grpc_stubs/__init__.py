"""Stubs generated from TorchServe 0.12.0's protos by grpc_codegen.py."""
