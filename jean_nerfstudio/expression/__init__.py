"""Transformer expression codes, disentangled from speech (JEAN's second contribution).

Modules, one job each:

- `inputs`: a processed clip -> per-frame encoder inputs (identity-normalized; speech channels only low-passed) and the
  probe/adversary targets (the high-pass, phonetic mouth shape).
- `encoder`: the banded-attention transformer, inputs [N, F] -> codes [N, D].
- `objective`: the self-supervised losses (masked temporal modelling, speech-leak penalty, smoothness), usable inside
  `ns-train jean` every step and in `jean-train-expression`.
- `probes`: held-out ridge/MLP probes that measure what the codes carry (mouth shape vs upper face).
- `controls`: named viewer edits (smile, brow raise, blink, ...) of the encoder's input.
- `transfer`: another clip's expression sequence, checked and resampled for a trained head.
- `checkpoint`: save/load with the input-layout signature and the probe numbers.
- `source`: the NeRF model's expression source, one factory for the transformer and the per-frame mlp.
- `train`, `train_cli`: pre-training on processed clips (`jean-train-expression`).

See docs/expression_encoder.md. Nothing here is imported at plugin discovery time except by the model that uses it.
"""
