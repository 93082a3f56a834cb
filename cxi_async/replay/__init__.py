"""Synthetic Q2 load: the replay producer, its patterns and the crystal it simulates."""
