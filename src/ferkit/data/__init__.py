"""Input: datasets and their protocols, image files, the loaders, the per-image transforms and the batched pipeline."""
