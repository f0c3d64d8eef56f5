"""Deployment: a rung exported and bundled, and the table of what fits the device."""
