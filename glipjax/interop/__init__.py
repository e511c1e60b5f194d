"""Import of official GLIP / HF checkpoints, and export back to PyTorch layout."""
