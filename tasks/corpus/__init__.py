"""Corpus steps: each module a small step over a stream of `Document` records, or one phase of a global step."""
