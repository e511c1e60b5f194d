"""Tokenisers with character offsets, and grounding prompts / positive maps."""
