"""What several test modules share: real media (media), checkpoint files in the formats users bring
(checkpoint_formats), the DFDC reference procedure (dfdc_reference), live traffic and worker kills
(live_load), and box geometry (below)."""


def box_inside(box, region) -> bool:
    """True when the box's centre lies inside the region (x1, y1, x2, y2)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]
