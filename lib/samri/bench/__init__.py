"""Benchmarks: `inprocess` (`samri bench`), `http` (round trips to a server), `clients` (several clients at once)."""
