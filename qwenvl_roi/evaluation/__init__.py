"""Metrics (ROI- and image-level), threshold selection on val, reports."""
