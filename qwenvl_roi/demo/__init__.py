"""The embedded default: synthetic defect data and the end-to-end CPU demo."""
