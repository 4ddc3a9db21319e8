"""The shapes a QEfficient-compiled QPC accepts (its specializations), as pure data, and how a
call of the engine contract maps onto them. Shared by the qaic executor and its test double.

With continuous batching (always on here: sessions live in batch_index slots):
- prefill: batch 1, seq_len = prefill_seq_len, num_logits_to_keep [1, 1];
- decode, target (TLM): batch = full_batch_size, seq_len = K+1 for each compiled K,
  num_logits_to_keep [K+1, 1];
- decode, draft (plain model): batch = full_batch_size, seq_len = 1, no num_logits_to_keep;
  it returns only the logits of each row's last real position.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Specialization:
    phase: str           # "prefill" or "decode"
    batch: int
    seq_len: int
    num_logits: int      # logits kept per row (the num_logits_to_keep shape for a TLM)


@dataclass(frozen=True)
class QpcLayout:
    """What one compiled QPC is: its role and its specializations."""

    tlm: bool                      # compiled with qaic_config speculative_model_type (K+1 logits)
    num_heads: int                 # Turbo heads (logits [B, N, H+1, V]); 0 otherwise
    prefill_seq_len: int
    ctx_len: int
    full_batch_size: int
    decode_ks: tuple[int, ...]     # TLM: compiled K values; draft: (0,)
    vocab_size: int

    @property
    def role(self) -> str:
        """QEfficient's speculative_model_type for a TLM ("target", "turbo"); "draft" for a
        plain model. It also names the exported graph (<checkpoint>/onnx/<role>.onnx)."""
        return "turbo" if self.num_heads else "target" if self.tlm else "draft"

    def specializations(self) -> list[Specialization]:
        specs = [Specialization("prefill", 1, self.prefill_seq_len, 1)]
        for k in self.decode_ks:
            specs.append(Specialization("decode", self.full_batch_size, k + 1,
                                        k + 1 if self.tlm else 1))
        return specs

    def logits_shape(self, spec: Specialization) -> tuple[int, ...]:
        shape = (spec.batch, spec.num_logits)
        return shape + ((self.num_heads + 1, self.vocab_size) if self.num_heads else (self.vocab_size,))

    def choose(self, seq_len: int, num_logits: int) -> Specialization:
        """The specialization a call of seq_len tokens per row runs in: the smallest decode
        window that holds it (with enough logits), else prefill (one call per row)."""
        for spec in sorted(self.specializations()[1:], key=lambda s: s.seq_len):
            if spec.seq_len >= seq_len and spec.num_logits >= num_logits:
                return spec
        prefill = self.specializations()[0]
        if seq_len > prefill.seq_len or num_logits > 1:
            raise ValueError(f"no specialization runs {seq_len} tokens keeping {num_logits} "
                             f"logits (compiled: {self.specializations()})")
        return prefill
