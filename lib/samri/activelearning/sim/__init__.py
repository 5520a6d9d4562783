"""The simulated annotation loop (`samri al-sim`): `loop`, `pool` (studies and variants), `report`."""
