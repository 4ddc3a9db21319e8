"""Proposers: cheap guessers of the next k tokens."""
