"""Text-video retrieval (as MSR-VTT): clips of N frames through the image tower, pooled in time."""
