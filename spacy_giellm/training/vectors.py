"""Initialise a from-scratch model's token embeddings from spaCy word vectors.

For every tokenizer piece that is a key of the pipeline's vectors
(ja_ginza: 20,000 x 300), its vector is taken, the set is reduced to the
model's hidden size with PCA and rescaled to the embeddings' own spread;
other pieces keep their random init. Optional (`--ginza-vectors`): kept in
the recipe only where it measurably helps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union


def init_embeddings_from_vectors(
    model_dir: Union[str, Path], pipeline: str = "ja_ginza"
) -> Dict[str, Any]:
    """Overwrite the input embeddings of the model saved in `model_dir`.
    Returns how many pieces got a vector."""
    import numpy as np
    import spacy
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    nlp = spacy.load(pipeline, exclude=["tok2vec", "parser", "ner", "morphologizer",
                                        "compound_splitter", "bunsetu_recognizer"])
    vocab = nlp.vocab
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    emb = model.get_input_embeddings().weight
    hidden = emb.shape[1]
    ids, rows = [], []
    for piece, idx in tok.get_vocab().items():
        word = piece.replace("\u2581", "")
        if word and vocab.has_vector(word):
            ids.append(idx)
            rows.append(vocab.get_vector(word))
    if len(ids) <= hidden:
        return {"pieces_with_vectors": len(ids), "used": False}
    x = np.asarray(rows, dtype=np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    y = x @ vt[:hidden].T
    y *= float(emb.detach().std()) / (y.std() or 1.0)
    with torch.no_grad():
        emb[torch.tensor(ids)] = torch.tensor(y, dtype=emb.dtype)
    model.save_pretrained(str(model_dir), safe_serialization=True)
    return {"pieces_with_vectors": len(ids), "used": True}


__all__ = ["init_embeddings_from_vectors"]
