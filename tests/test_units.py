"""Pure functions on hand-written inputs: acceptance, stop rules, sync, metrics, config."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from specdec.acceptance import greedy_accept
from specdec.admission import Admission, AdmissionPool
from specdec.config import EngineConfig, device_for_group
from specdec.errors import AdmissionRefused, InvalidRequest, PreconditionFailed
from specdec.generation import GenerationRecord
from specdec.method import GENERATE_METHODS, Method
from specdec.metrics import batch_metrics, draft_lengths, drafted_at_of, generation_metrics, union_length
from specdec.sequence import SlotSequence, common_prefix_len
from specdec.stopping import FinishReason, StopParams, cut_at_stop


@pytest.mark.parametrize("draft, target, accepted", [
    ([], [7], 0),
    ([1, 2, 3], [1, 2, 3, 4], 3),   # all accepted: bonus 4
    ([1, 9, 3], [1, 2, 3, 4], 1),   # rejected at 2: correction 2
    ([9, 2, 3], [1, 2, 3, 4], 0),   # later matches do not count after a rejection
])
def test_greedy_accept(draft, target, accepted):
    assert greedy_accept(np.array(draft, dtype=np.int64), np.array(target)) == accepted


def test_cut_at_stop():
    eos = (2,)
    p = StopParams(max_new_tokens=10)
    assert cut_at_stop([5, 2, 6], 0, 4, p, eos, 100) == ([5, 2], FinishReason.EOS)
    assert cut_at_stop([5, 2, 6], 0, 4, StopParams(10, ignore_eos=True), eos, 100) == \
        ([5, 2, 6], FinishReason.NONE)
    assert cut_at_stop([5, 6, 7], 8, 4, p, eos, 100) == ([5, 6], FinishReason.LENGTH)
    assert cut_at_stop([5, 6, 7], 0, 98, StopParams(), eos, 100) == ([5, 6], FinishReason.CTX_LEN)
    # EOS beyond the budget cut does not count.
    assert cut_at_stop([5, 6, 2], 8, 4, p, eos, 100) == ([5, 6], FinishReason.LENGTH)


def test_slot_sequence_sync_rolls_back():
    seq = SlotSequence(slot=0, tokens=[1, 2, 3, 4], cached=4)
    seq.sync(2, [7, 8], ctx_len=10, vocab_size=20)
    assert seq.tokens == [1, 2, 7, 8] and seq.cached == 2
    seq.sync(4, [9], ctx_len=10, vocab_size=20)
    assert seq.tokens == [1, 2, 7, 8, 9] and seq.cached == 2
    with pytest.raises(PreconditionFailed):
        seq.sync(6, [1], ctx_len=10, vocab_size=20)
    with pytest.raises(InvalidRequest, match="ctx_len"):
        seq.sync(5, [1] * 6, ctx_len=10, vocab_size=20)
    with pytest.raises(InvalidRequest, match="out of range"):
        seq.sync(0, [20], ctx_len=10, vocab_size=20)


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2]) == 2
    assert common_prefix_len([1, 2, 3, 4], [1, 2, 3, 9], known=2) == 3  # scan starts after known
    assert common_prefix_len([1], [1, 2], known=5) == 1
    rng = np.random.default_rng(2)   # against the token-by-token scan, at every length
    for _ in range(300):
        a = rng.integers(0, 3, int(rng.integers(0, 40))).tolist()
        b = a[:int(rng.integers(0, len(a) + 1))] + rng.integers(0, 3, int(rng.integers(0, 5))).tolist()
        want = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common_prefix_len(a, b) == common_prefix_len(b, a) == want
        assert common_prefix_len(a, b, known=int(rng.integers(0, want + 1))) == want


def test_method_names_are_the_wire_values_and_take_qefficient_aliases():
    assert [str(m) for m in Method] == ["draft", "ngram", "suffix", "turbo", "none"]
    assert Method.parse(" PLD ") is Method.parse("prompt_lookup") is Method.NGRAM
    assert Method.parse("multi-projection") is Method.parse("multiprojs") is Method.TURBO
    assert Method.parse("draft_based") is Method.DRAFT and Method.DRAFT == "draft"
    with pytest.raises(InvalidRequest, match="unknown method 'beam': one of none, draft, ngram, turbo"):
        Method.parse("beam", GENERATE_METHODS)
    with pytest.raises(InvalidRequest, match="not served here: method 'suffix'"):
        Method.parse("suffix", GENERATE_METHODS)


def test_admission_pool():
    async def go() -> None:
        pool = AdmissionPool(2)
        a, b = await pool.acquire(), await pool.acquire()
        assert {a, b} == {0, 1} and pool.in_use == 2
        with pytest.raises(AdmissionRefused):
            await pool.acquire()
        pool.release(a)
        with pytest.raises(ValueError):
            pool.release(a)
        assert await pool.acquire() == a
    asyncio.run(go())


def test_admission_pool_is_an_awaitable_wait_with_a_timeout():
    """A waiter gets the next freed ticket before any newcomer; one past max_waiting is refused at
    once; one whose wait runs out is refused; a cancelled waiter gives up its place."""
    async def go() -> None:
        pool = AdmissionPool(1, Admission(max_waiting=2, wait_s=5.0))
        held = await pool.acquire()
        first = asyncio.ensure_future(pool.acquire())
        cancelled = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        assert pool.waiting == 2
        with pytest.raises(AdmissionRefused, match="queue is full"):
            await pool.acquire()
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert pool.waiting == 1
        pool.release(held)
        assert await first == held and pool.in_use == 1 and pool.waiting == 0
        short = AdmissionPool(1, Admission(max_waiting=1, wait_s=0.01))
        await short.acquire()
        with pytest.raises(AdmissionRefused, match="for 0.01s"):
            await short.acquire()
        assert short.waiting == 0
    asyncio.run(go())


def test_union_length():
    assert union_length([]) == 0
    assert union_length([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4)
    assert union_length([(0, 10), (2, 3)]) == pytest.approx(10)


def record(t_start, t_first, t_end, tokens, steps, step_tokens, drafted, accepted):
    return GenerationRecord(prompt_len=3, tokens=list(range(tokens)), t_start=t_start,
                            t_first=t_first, t_end=t_end, verify_steps=steps,
                            step_tokens=step_tokens, drafted=drafted, accepted=accepted,
                            drafted_at=[steps, steps], accepted_at=[accepted - 2, 2])


def test_metrics_formulas():
    a = record(0.0, 1.0, 3.0, tokens=11, steps=4, step_tokens=10, drafted=8, accepted=6)
    m = generation_metrics(a)
    assert m.ttft_s == 1.0 and m.decode_throughput == pytest.approx(10 / 2.0)
    assert m.e2e_throughput == pytest.approx(11 / 3.0)
    assert m.mean_accepted_tokens == pytest.approx(2.5)
    assert m.acceptance_by_position == [1.0, 0.5]
    # Two prompts decoded one after the other: decode time is the sum of both spans.
    b = record(3.0, 4.0, 5.0, tokens=5, steps=4, step_tokens=4, drafted=8, accepted=0)
    t = batch_metrics([a, b])
    assert t.decode_throughput == pytest.approx((10 + 4) / 3.0)
    assert t.e2e_throughput == pytest.approx(16 / 5.0)
    assert t.mean_accepted_tokens == pytest.approx(14 / 8)
    assert t.avg_ttft_s == pytest.approx(1.0)
    assert m.draft_length_histogram == [0, 0, 4] and t.draft_length_histogram == [0, 0, 8]


def test_draft_lengths_from_drafts_verified_per_position():
    # Rounds of 3, 1, 0 and 3 drafted tokens: 4 rounds had a draft token 0, 2 had token 1 and 2.
    assert draft_lengths([3, 2, 2], 4) == [1, 1, 0, 2]
    assert draft_lengths([], 5) == [5]      # target-only: every round verified none
    assert drafted_at_of([1, 1, 0, 2]) == [3, 2, 2] and drafted_at_of([5]) == []


def test_config_validation():
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(model="m", dtype="int8")
    assert device_for_group("1,2", cuda_available=True) == "cuda:1"
    assert device_for_group("0", cuda_available=False) == "cpu"
    with pytest.raises(ValueError):
        device_for_group("a", cuda_available=False)


@pytest.mark.parametrize("requested, checkpoint, device, native, faster, chosen", [
    ("float16", "bfloat16", "cpu", True, True, "float16"),     # asked for: taken as asked
    ("auto", None, "cuda:0", True, True, "float32"),           # no dtype in config.json
    ("auto", "float32", "cuda:0", True, True, "float32"),
    ("auto", "bfloat16", "cuda:0", True, False, "bfloat16"),   # CUDA: native is enough
    ("auto", "bfloat16", "cuda:0", False, True, "float32"),    # a GPU without bf16
    ("auto", "bfloat16", "cpu", False, True, "float32"),       # no AVX512-BF16 / AMX
    ("auto", "bfloat16", "cpu", True, False, "float32"),       # native, but measured slower
    ("auto", "bfloat16", "cpu", True, True, "bfloat16"),
    ("auto", "float16", "cpu", True, True, "float16"),
])
def test_dtype_auto_keeps_the_checkpoints_where_the_device_computes_it_fast(
        requested, checkpoint, device, native, faster, chosen):
    from specdec.engine.dtypes import choose_dtype

    asked: list[str] = []

    def measured(dtype: str) -> bool:
        asked.append(dtype)
        return faster

    dtype, why = choose_dtype(requested, checkpoint, device, lambda d: native, measured)
    assert dtype == chosen and why
    # Only a CPU that computes the checkpoint's dtype natively pays for the measurement.
    assert asked == ([checkpoint] if requested == "auto" and device == "cpu" and native
                     and checkpoint not in (None, "float32") else [])
