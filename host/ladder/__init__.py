"""The ladder: models, pruning (magnitude and channel), training, initial weights, regularizers."""
