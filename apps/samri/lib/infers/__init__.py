"""SAMRI infer tasks and the per-process serving runtime they share."""
