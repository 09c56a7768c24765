"""The variants' torch networks (imported only when a model is built)."""
