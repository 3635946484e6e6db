"""Analyses of a model: its layer table (and, later, sensitivity and weight statistics)."""
