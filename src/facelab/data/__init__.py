"""Data: the synthetic face world (ground truth for everything) and real images/video (detection, cropping,
landmarks, preprocessing cache, mixed-dataset sampling)."""
