"""SAMRI decoder trainer (later issue)."""
