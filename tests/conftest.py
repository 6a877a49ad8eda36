"""Shared test set-up."""
import matplotlib

matplotlib.use("Agg")
