"""Search over the passages that `infer-corpus` embedded: index backends and ranking."""
