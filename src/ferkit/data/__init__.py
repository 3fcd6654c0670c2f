"""Input: datasets and their protocols, image files, the per-image transforms and the batched pipeline."""
