"""SAM-family networks: `builders` (presets, `build_model`, `load_model`) and strict `checkpoints`."""
