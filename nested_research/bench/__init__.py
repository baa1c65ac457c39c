"""Benchmarks whose output the README quotes, each a command, ``python -m
nested_research.bench.<name>``:

- :mod:`.optimizer`: the optimizer's step time and memory against Adam, AdamW and Lion (the
  command: its flags, sections and JSON), in parts:

  - :mod:`.setups`: the optimizer rows and their builder, the variable sets, the
    training-step models;
  - :mod:`.timing`: the compiled optimizer step, timed blocks alternated between the rows,
    medians and ratios to Adam;
  - :mod:`.optimizer_only`: the optimizer-only step on the variable sets and on a sparse
    (``IndexedSlices``) gradient;
  - :mod:`.training_step`: the full training step of the CNN and the Transformer;
  - :mod:`.memory`: optimizer state bytes per parameter and the XLA/graph profile of one
    variable's step;
  - :mod:`.accuracy`: test accuracy with float32 and bfloat16 optimizer state;
  - :mod:`.report`: the machine and the printed tables;

- :mod:`.tracking`: the cost of experiment tracking per training step;
- :mod:`.models`: training tokens per second of the Transformer, the CMS Transformer and Hope
  at about equal parameter counts, and the Hope block's chunked memory against its
  token-by-token recurrence at sequence length 256.
"""
