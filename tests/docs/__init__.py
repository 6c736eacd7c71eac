"""Tests of the documentation: the README and the docs site say what the code does."""
