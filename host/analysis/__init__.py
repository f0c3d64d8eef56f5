"""Analysis: fine-tuning, CKA, and the cost models (FLOPs, backprop memory) they report."""
