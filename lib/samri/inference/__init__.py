"""Click -> mask: `prompts` (request schema), `embeddings` (cache), `segmenter`, `propagation` (3D),
`request` (`run_request`)."""
