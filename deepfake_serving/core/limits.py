"""The numbers several layers share, defined once."""

# Faces classified per image (the largest-confidence ones; more are reported, not scored).
MAX_IMAGE_FACES = 32
# The video face pool: the DFDC reference classifies at most 127 faces per clip, in frame order.
MAX_VIDEO_FACES = 127
# Frames sampled from a clip unless the request says otherwise (DFDC: 32, evenly spaced).
DEFAULT_FRAMES = 32
