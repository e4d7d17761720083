"""Training, evaluation of a model and export. Nothing heavy is imported here: torch,
transformers and peft load inside the functions that need them.

- `data`: JSONL records -> tokenized examples (loss on output tokens only)
- `train`: LoRA / full fine-tuning / tiny from-scratch Llama with Trainer
- `evaluate`: held-out scores through the `giellm` component
- `export`: LoRA merge, GGUF export + verification (packaging: `spacy_giellm.packaging`)
- `tiny`, `gguf_export`: the offline tiny Llama builder and llama.cpp's converter
"""
