"""Training of the model family shipped in models/: run `python -m training` (see README.md).

Modules: options (flags), data (corpus, split, tokenizer, windows), models (target and draft),
heads (Turbo heads by self-distillation), evaluation (held-out metrics and speculation through
specdec.generation), card (models/README.md), verify (end-of-run checks), pipeline (the phases),
loop (logging and the optimisation loop).
"""
