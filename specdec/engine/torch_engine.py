"""The torch executor: the lean llama-family forward behind the engine contract, on CPU or CUDA."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from specdec.config import EngineConfig
from specdec.cpu_cores import pin_threads
from specdec.engine.checkpoint import LlamaFamilyConfig, load_state_dict, read_config
from specdec.engine.compiled import CompiledSteps, StepCompiler
from specdec.engine.dtypes import TORCH_DTYPES, choose_dtype, gemv_faster, natively_computed
from specdec.engine.hub import resolve_model_path
from specdec.engine.llama import LlamaFamilyModel, fuse_state_dict, rope_inv_freq
from specdec.engine.specializations import by_size, gather_index, pad_call, plan
from specdec.engine.turbo import load_turbo_heads

log = logging.getLogger(__name__)


def build_model(cfg: LlamaFamilyConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
                device: str) -> LlamaFamilyModel:
    """Instantiate without allocating random weights, then adopt the checkpoint's tensors."""
    with torch.device("meta"):
        model = LlamaFamilyModel(cfg)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_word_embeddings or "lm_head.weight" not in state:
        # Tied checkpoints omit lm_head; an untied one without it is refused below.
        if not cfg.tie_word_embeddings:
            raise ValueError("checkpoint has no lm_head.weight and tie_word_embeddings is false")
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    state = fuse_state_dict(state, cfg.num_layers)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the {cfg.model_type} layout: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    # A tied lm_head becomes its own [D, V] copy of the embedding table (see fuse_state_dict).
    return model.to(device=device, dtype=dtype).eval()


def heads_for_window(num_heads: int, window: int) -> int:
    """Turbo heads a greedy step of `window` tokens evaluates: one more than the drafts it
    verifies (window - 1), so the next round can draft one token further, at most all H. The
    heads and their lm_head passes are a large part of a short step (python -m
    bench.turbo_cost): a target-only round (window 1) runs one head, not H, and k auto's short
    rounds stay short. Static per compiled window, so no extra graphs."""
    return min(num_heads, window)


class TorchEngine:
    """Engine contract on torch. Not thread-safe: callers serialise `run` (the services do)."""

    def __init__(self, config: EngineConfig, windows: tuple[int, ...] = (1,),
                 keep_window_logits: bool = False) -> None:
        """windows: positions per decode step to compile for (a verifier: k + 1 for each verify
        window; a draft: 1, and 2 for the bonus sync); keep_window_logits: a target keeps the
        logits of every window position. Used only where config.compile is not "off"."""
        if config.cpu_cores and config.device == "cpu":
            pin_threads(config.cpu_cores)
        path = resolve_model_path(config.model)
        self.model_config = read_config(path)
        mc = self.model_config
        self.path = path
        self.device = config.device
        dtype, why = choose_dtype(
            config.dtype, mc.torch_dtype, config.device,
            lambda d: natively_computed(config.device, d),
            lambda d: gemv_faster(d, mc.hidden_size, mc.intermediate_size))
        self.dtype = TORCH_DTYPES[dtype]
        self.vocab_size = mc.vocab_size
        self.ctx_len = config.ctx_len
        self.slots = config.full_batch_size
        self.prefill_seq_len = config.prefill_seq_len
        self.eos_token_ids = mc.eos_token_ids
        self.model = build_model(mc, load_state_dict(path), self.dtype, config.device)
        self.turbo_heads = None
        # Turbo heads H, evaluated on demand (contract.HeadsOnDemand): run() returns the base
        # head [B, N, V] and keeps the window's final hidden states for head_logits.
        self.num_heads = 0
        self.kept: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # slot -> (positions [N], [N, D])
        self.ready: dict[int, tuple[int, list[int]]] = {}  # slot -> (position, guesses [H]), guesses_at
        if config.turbo:
            turbo, heads = load_turbo_heads(path, mc.hidden_size)
            self.turbo_heads = heads.to(device=config.device, dtype=self.dtype)
            self.num_heads = turbo.num_heads
        positions = torch.arange(config.ctx_len, dtype=torch.float32)
        self.kv_positions = torch.arange(config.ctx_len, device=config.device)  # sliced per call
        freqs = torch.outer(positions, rope_inv_freq(mc))
        emb = torch.cat((freqs, freqs), dim=-1)   # [ctx_len, hd], float32 as in transformers
        self.cos = emb.cos().to(config.device)
        self.sin = emb.sin().to(config.device)
        shape = (self.slots, mc.num_kv_heads, config.ctx_len + 1, mc.head_dim)  # +1: scratch
        self.caches = [
            (torch.zeros(shape, dtype=self.dtype, device=config.device),
             torch.zeros(shape, dtype=self.dtype, device=config.device))
            for _ in range(mc.num_layers)
        ]
        log.info("loaded %s (%s, %d layers, vocab %d) on %s%s as %s (%s); KV %d slots x %d "
                 "positions", path, mc.model_type, mc.num_layers, mc.vocab_size, config.device,
                 f" (cores {','.join(map(str, config.cpu_cores))}, {torch.get_num_threads()} threads)"
                 if config.device == "cpu" else "", dtype, why, self.slots, config.ctx_len)
        # Compiled steps join as they are built (compiled.py); None: every step runs eager.
        self.compiled: CompiledSteps | None = None
        self.compiler: StepCompiler | None = None
        if config.compile != "off":
            self.compiler = StepCompiler(self, by_size(plan(self.slots, windows, keep_window_logits)),
                                         config.compile_dir, auto=config.compile == "auto",
                                         on_engine_thread=str(config.device).startswith("cuda"))
            self.compiled = self.compiler.steps
            self.compiler.start()

    def wait_compiled(self, timeout_s: float | None = None) -> bool:
        """Block until every planned step shape is compiled, or compiling ended otherwise (it
        failed, or --compile auto found it does not pay): True when it has ended."""
        return self.compiler is None or self.compiler.wait(timeout_s)

    def when_compiled(self, callback: Callable[[], None]) -> None:
        """callback() once compiling has ended (at once where there is none)."""
        if self.compiler is None:
            callback()
        else:
            self.compiler.when_done(callback)

    def stop_compiling(self) -> None:
        """contract.CompilesInBackground: build no more graphs (the Batcher is closing)."""
        if self.compiler is not None:
            self.compiler.stop()

    def compile_on(self, thread_id: int) -> None:
        """contract.CompilesWhenIdle: the thread that runs this engine compiles it where the
        graphs must be recorded on it (CUDA)."""
        if self.compiler is not None:
            self.compiler.compile_on(thread_id)

    def idle_step(self) -> bool:
        """contract.CompilesWhenIdle: one piece of compiling on the engine thread; False when
        there is none to do here."""
        return self.compiler is not None and self.compiler.idle_step()

    def _check(self, input_ids: np.ndarray, position_ids: np.ndarray, batch_index: np.ndarray,
               num_logits: int) -> None:
        # Callers are the project's own session code, which validates user input first: a
        # failure here is a bug, hence plain ValueError (mapped to INTERNAL).
        if input_ids.ndim != 2 or input_ids.shape != position_ids.shape:
            raise ValueError(f"input_ids {input_ids.shape} and position_ids {position_ids.shape} "
                             "must both be [B, S]")
        if batch_index.shape != (input_ids.shape[0],):
            raise ValueError(f"batch_index must be [B], got {batch_index.shape}")
        if len(set(batch_index.tolist())) != len(batch_index) or batch_index.min() < 0 \
                or batch_index.max() >= self.slots:
            raise ValueError(f"batch_index {batch_index.tolist()} must be distinct slots < {self.slots}")
        if not 1 <= num_logits <= input_ids.shape[1]:
            raise ValueError(f"num_logits {num_logits} must be in 1..{input_ids.shape[1]}")
        if position_ids.max() >= self.ctx_len or position_ids.min() < -1:
            raise ValueError(f"positions must be in -1..{self.ctx_len - 1}")
        real = input_ids[position_ids >= 0]
        if real.size and (real.min() < 0 or real.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}")

    def step(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor,
             gather: torch.Tensor, kv_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """ids/pos [B, S], slots [B], gather [B, N] window positions to keep, kv_pos [L] the KV
        positions attended (0..L-1) -> (float32 logits
        [B, N, V], final hidden states [B, N, D], Turbo: [B, 1+H] int64 = per row, the kept
        column a greedy verifier drafts from next, then the heads' top-1 guesses there; None for
        a plain model). No host syncs: torch.compile captures it whole."""
        h = self.model.hidden_states(ids, pos, slots, self.cos, self.sin, self.caches, kv_pos)
        h = h.gather(1, gather[:, :, None].expand(-1, -1, h.shape[-1]))    # [B, N, D]
        normed = self.model.model.norm(h)                                   # [B, N, D]
        logits = self.model.lm_head(normed).float()                         # [B, N, V]
        if self.turbo_heads is None:
            return logits, normed, None
        heads = self.turbo_heads[:heads_for_window(len(self.turbo_heads), ids.shape[1])]
        return logits, normed, self._greedy_guesses(heads, logits, normed,
                                                    ids.gather(1, gather), pos.gather(1, gather))

    def _greedy_guesses(self, turbo_heads: torch.nn.ModuleList, logits: torch.Tensor,
                        normed: torch.Tensor, kept_ids: torch.Tensor,
                        kept_pos: torch.Tensor) -> torch.Tensor:
        """In the step's graph, so a greedy verify round needs no second engine call: each row's
        greedy acceptance (the window's drafts d_j+1 that equal the base argmax at column j,
        while consecutive), and the H heads evaluated at that one column only.
        logits [B, N, V], normed [B, N, D], kept_ids/kept_pos [B, N] -> [B, 1+H] int64."""
        target = logits.argmax(-1)                                          # [B, N]
        draft_ok = (target[:, :-1] == kept_ids[:, 1:]) & (kept_pos[:, 1:] == kept_pos[:, :-1] + 1)
        col = draft_ok.long().cumprod(1).sum(1, keepdim=True)               # [B, 1]
        at = normed.gather(1, col[:, :, None].expand(-1, -1, normed.shape[-1]))[:, 0]  # [B, D]
        heads = torch.stack([head(at) for head in turbo_heads], dim=1)       # [B, H, D]
        return torch.cat([col, self.model.lm_head(heads).argmax(-1)], dim=1)  # [B, 1+H]

    def head_logits(self, batch_index: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """[R] slots, [R] positions -> [R, H, V] float32: the Turbo heads on the final hidden
        state the last run() kept for each slot at that position (contract.HeadsOnDemand). Only
        the one position a verifier drafts from goes through the heads and lm_head, not the
        whole window. Touches no cache and only the rows' own kept states, so it may run beside
        a run() on other slots."""
        if self.turbo_heads is None:
            raise ValueError("head_logits needs a Turbo model (turbo=True)")
        rows = []
        for slot, p in zip(batch_index.tolist(), positions.tolist()):
            kept = self.kept.get(slot)
            where = np.flatnonzero(kept[0] == p) if kept is not None else np.empty(0, np.int64)
            if kept is None or not where.size:
                raise ValueError(f"slot {slot} kept no hidden state at position {p} (kept "
                                 f"{kept[0].tolist() if kept is not None else []})")
            rows.append(kept[1][int(where[0])])
        with torch.inference_mode():
            h = torch.stack(rows)                                             # [R, D]
            heads = torch.stack([head(h) for head in self.turbo_heads], dim=1)  # [R, H, D]
            return self.model.lm_head(heads).float().cpu().numpy()           # [R, H, V]

    def copy_slot(self, src: int, dsts: list[int], start: int, stop: int) -> None:
        """KV of slot src -> each slot of dsts, positions start..stop-1 (pre-drafted branches
        start from copies of their session's slot; the caller skips the positions every dst
        holds already, and past stop a dst keeps stale entries, which no query sees before it
        overwrites them). One indexed write per cache tensor, not one per destination. Safe
        beside a running step that touches none of the slots."""
        index = torch.tensor(dsts, device=self.device)
        with torch.inference_mode():
            for k, v in self.caches:
                k[index, :, start:stop] = k[src, :, start:stop]
                v[index, :, start:stop] = v[src, :, start:stop]

    def run(self, input_ids: np.ndarray, position_ids: np.ndarray, batch_index: np.ndarray,
            num_logits: int) -> np.ndarray:
        """[B, num_logits, V] float32 (base head only; Turbo heads via head_logits)."""
        self._check(input_ids, position_ids, batch_index, num_logits)
        b, s = input_ids.shape
        spec = self.compiled.fit(b, s, num_logits) if self.compiled else None
        if spec is None and self.compiler is not None and not self.compiler.done.is_set():
            self.compiler.note_use(b, s, num_logits)
        if spec is None:   # uncompiled: exactly this shape, attending only as far as needed
            ids = np.where(position_ids >= 0, input_ids, 0)
            pos, slots, step, kv_len = position_ids, batch_index, self.step, int(position_ids.max()) + 1
            gather = gather_index(position_ids, num_logits, num_logits)
        else:              # a compiled specialization: padded to its fixed shape, the KV in use
                           # rounded up to the graph's bucket
            ids, pos, slots = pad_call(spec, input_ids, position_ids, batch_index)
            assert self.compiled is not None  # fit() found a specialization
            step, kv_len = self.compiled.step, self.compiled.kv_len(int(pos.max()) + 1)
            gather = gather_index(pos, num_logits, spec.logits)
        dev = self.device
        with torch.inference_mode():
            out, hidden, guesses = step(torch.from_numpy(ids.astype(np.int64)).to(dev),
                                        torch.from_numpy(pos.astype(np.int64)).to(dev),
                                        torch.from_numpy(slots.astype(np.int64)).to(dev),
                                        torch.from_numpy(gather).to(dev), self.kv_positions[:kv_len])
            if guesses is not None:
                # A copy: a CUDA graph's outputs are overwritten by its next replay.
                self._keep(batch_index, np.take_along_axis(pos, gather, 1)[:b, :num_logits],
                           hidden[:b, :num_logits].clone(), guesses[:b].cpu().numpy())
            return out[:b, :num_logits].cpu().numpy()

    def guesses_at(self, slot: int, position: int) -> list[int] | None:
        """The heads' top-1 guesses [H] at `position` if the slot's last run() evaluated them
        there (its greedy acceptance point, see _greedy_guesses); None otherwise: head_logits
        then. A read of what that run left, safe beside a run() on other slots."""
        ready = self.ready.get(slot)
        return ready[1] if ready is not None and ready[0] == position else None

    def _keep(self, batch_index: np.ndarray, kept_pos: np.ndarray, hidden: torch.Tensor,
              guesses: np.ndarray) -> None:
        """Per row: positions [N] and final hidden states [N, D] of its kept logits, and the
        heads' guesses at its greedy column (guesses [B, 1+H])."""
        for r, slot in enumerate(batch_index.tolist()):
            if kept_pos[r].max() >= 0:  # an all-padding row leaves its slot's kept state alone
                self.kept[slot] = (kept_pos[r], hidden[r])
                self.ready[slot] = (int(kept_pos[r, guesses[r, 0]]), guesses[r, 1:].tolist())
