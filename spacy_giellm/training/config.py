"""What `train` is asked to do: `TrainConfig`, and `TinyModelConfig` for a
model built from scratch.

The defaults are the recipe measured on a CPU
(benchmarks/quality-public-corpora.md: LoRA r 16, alpha 32 on all linear
layers, lr 5e-4 on a cosine with 5% warmup, batch 8, sequences up to 256
tokens), trained for epochs with early stopping on the
dev loss; `configs/lora-cpu.cfg` writes them out (`config_file`)."""
from dataclasses import dataclass, field
from typing import Optional, Sequence

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TinyModelConfig:
    """Size of the from-scratch Llama (`training.tiny.build_tiny_llama`)."""

    vocab_size: int = 3000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    init_std: float = 0.02
    ginza_vectors: bool = False


@dataclass
class TrainConfig:
    base_model: Optional[str] = None
    from_scratch: bool = False
    full: bool = False
    tasks: Sequence[str] = ()
    # The user's task definitions (`--task`: names or task files); they win
    # over those the training data's sidecar carries.
    task_files: Sequence[str] = ()
    lora_r: int = 16
    lora_alpha: int = 32
    # 0: on a CPU the dropout mask cost a sixth of a step (bernoulli_ on every
    # linear layer's input; benchmarks/training-throughput.md)
    lora_dropout: float = 0.0
    # module names, or ("all-linear",): every linear layer but the LM head
    lora_target_modules: Sequence[str] = ("all-linear",)
    # Apply the LM head only where the loss looks (training.loss); False runs
    # the model's own forward (full-vocabulary logits at every position).
    output_token_loss: bool = True
    # CPU LoRA: "auto" holds the frozen base in bf16 where the CPU has
    # native bf16 matmuls, "bf16" always, "fp32" never. (GPU: bf16 if supported.)
    precision: str = "auto"
    # Pack each batch's sequences end to end (`data.PackCollator`: attention
    # kept inside each sequence, positions restarting) instead of padding
    # them to the longest: no compute on padding. A step still holds
    # `batch_size` sequences. Needs the output-token loss (padding otherwise).
    packing: bool = True
    # Tokens per packed row (0: a batch's sequences in one row).
    pack_row_tokens: int = 0
    # Record the time split, tokens/s, GFLOPS and peak RSS of the training
    # steps (`training.profile`) into the manifest's "profile".
    profile: bool = False
    # CPU LoRA on a bf16 base: run the adapters' matmuls (and the rest of the
    # forward that autocast covers) in bf16 under torch's CPU autocast; the
    # adapters' weights, gradients and optimizer state stay float32. None:
    # whenever the base is held in bf16 (`precision`).
    autocast: Optional[bool] = None
    # CPU: each LoRA linear layer and each Gemma RMS norm as one autograd
    # function (`training.fused`), the same arithmetic up to float rounding
    # in fewer passes over the activations (benchmarks/training-throughput.md).
    # Cases it does not cover (LoRA dropout, DoRA, other norms) run as before.
    fused_layers: bool = True
    # torch threads (0: torch's default, one per core).
    threads: int = 0
    # Activation (gradient) checkpointing: keep only each layer's input and
    # recompute the rest in the backward pass: about half the memory for
    # 1.4-1.6x the time on a CPU (benchmarks/training-speed.md). None: on a
    # GPU only.
    gradient_checkpointing: Optional[bool] = None
    # A recipe's unit is steps (max_steps, or epochs): a step is batch_size
    # sequences, packed or padded alike, so a step count means the same
    # training whatever the machine or its speed; max_time is a cap on top.
    # epochs is an upper bound: early stopping on the dev loss (patience)
    # ends a run on small data before it.
    epochs: float = 10.0
    max_steps: int = -1
    # Seconds of training in this run (0: no limit); with a budget the
    # learning rate follows a cosine over the time, not over the steps.
    max_time: float = 0.0
    # "wall": max_time is wall-clock seconds; "cpu": seconds of this
    # process's CPU time (all threads), a budget other jobs on the machine
    # do not eat into.
    time_clock: str = "wall"
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    warmup: float = 0.05  # steps, or a fraction of the steps if < 1
    # sequences per optimizer step, split over the processes of a
    # data-parallel run
    batch_size: int = 8
    eval_batch_size: int = 0  # 0: same as batch_size
    grad_accum: int = 1
    max_length: int = 256  # longer sequences are skipped and counted
    eval_steps: int = 50
    patience: int = 3  # evaluations without a better dev loss; 0: off, keep the last model
    save_total_limit: int = 2
    seed: int = 0
    logging_steps: int = 10
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
