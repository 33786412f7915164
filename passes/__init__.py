"""FX graph passes of lmkan-surgery: trace, probe, select, calibrate, shrink, replace (and formula FLOPs)."""
