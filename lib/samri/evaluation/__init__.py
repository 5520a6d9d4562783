"""SAMRI's evaluation protocol: `protocol`, `metrics`, `variants`, `report`, `figures`, `cli` (`samri evaluate`)."""
