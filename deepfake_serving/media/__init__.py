"""Untrusted media: image decoding, video streams from bytes or a file, sample media."""
