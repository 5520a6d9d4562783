"""SAMRI active-learning strategies (later issue)."""
