"""Faces: MTCNN's graphs on ONNX Runtime, the detector, the detected face set and the DFDC crops."""
