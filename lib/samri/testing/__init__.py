"""Test and benchmark tooling (the fuzz generator); nothing here is imported by serving code."""
