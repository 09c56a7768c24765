"""PyTorch modules of the five detector variants (registered in ``deepfake_serving.variants``)."""
