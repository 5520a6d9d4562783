"""The adaptation experiment (``samri adapt-sim``): a simulated annotator finishes studies of a new
domain through a real MONAI Label server, the server's trainer fine-tunes the decoder after each
round, and the clicks protocol measures what that buys on held-out studies (`experiment`)."""
