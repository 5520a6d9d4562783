"""Click -> mask: `prompts` (request schema), `embeddings` (cache), `segmenter`, `propagation` (3D),
`reuse` (a 3D click re-predicts only what it changes), `refine` (clicks on a previous mask),
`request` (`run_request`)."""
