"""Evaluation: sample distances for small data and likelihood (NLL, bits/dim)."""
