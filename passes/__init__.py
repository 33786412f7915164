"""FX graph passes of lmkan-surgery: trace, select, replace, shrink."""
