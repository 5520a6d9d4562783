"""The ``samri`` trainer task (`samri_trainer.SamriTrainer`) behind ``POST /train/samri``."""
