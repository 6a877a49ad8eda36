"""Shared utilities: registries, config validation, checkpoints, datasets, masks, results."""
