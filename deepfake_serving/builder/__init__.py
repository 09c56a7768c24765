"""Building bundles (imports torch): ``write.write_bundle``, the ONNX export, reduced precision under proof
and the MTCNN graphs' export."""
