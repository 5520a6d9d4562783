"""Active learning for SAMRI: scores that rank unlabelled studies, and the selection that uses them.

Modules (nothing heavy is imported here):

* `config`: ``configs/activelearning.yaml`` as typed settings;
* `sampling`: which slices of a study are scored;
* `uncertainty`: decoder behaviour under self-generated prompts (predicted IoU, stability,
  agreement under box jitter) and disagreement around an existing model label;
* `novelty`: pooled embeddings and their distance to the labelled studies';
* `scores`: the score record stored in the datastore, with the model version it was computed with;
* `scorer`: `StudyScorer`, which loads a study and produces its records (app jobs and ``al-sim``);
* `selection`: ranking, the combined score, and reservations for concurrent annotators.
"""
