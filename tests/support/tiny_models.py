"""A tiny BERT sentence embedder, so that training tests run in seconds on a CPU.

Two layers of width 32 with the bundled all-MiniLM-L6-v2 tokenizer, mean pooled: the same
kind of model as the real one (LoRA targets its `query` and `value` modules), a thousand
times smaller.
"""

from __future__ import annotations

from pathlib import Path

from inference.models import resolve_model


def tiny_embedder(folder: Path, seed: int = 0) -> Path:
    """Build, save and return a sentence-transformers folder holding a small random BERT."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=512)
    torch.manual_seed(seed)
    backbone = folder / "backbone"
    BertModel(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    transformer = Transformer(str(backbone), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu")
    out = folder / "tiny-embedder"
    model.save(str(out))
    return out
