"""SAMRI decoder training: stage 1 (embeddings via the shared cache) and stage 2 (mask decoder).

Run it with ``samri train`` or, distributed, ``torchrun --nproc_per_node N -m samri.train ...``.
Submodules: `samri.train.stage1`, `samri.train.stage2`, `samri.train.run`, `samri.train.store`.
"""
