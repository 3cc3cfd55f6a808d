"""Named models: the registry of model cards, the weights cache, downloads and imports (docs/weights.md)."""
