from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CTX_LEN: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CTX_LEN: FinishReason
FINISH_REASON_STOP: FinishReason

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "vocab_size", "tokenizer_fingerprint", "ctx_len", "max_k", "eos_token_ids", "prefill_seq_len", "full_batch_size", "method", "executor", "device", "draft_tokenizer_fingerprint")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CTX_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    FULL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    vocab_size: int
    tokenizer_fingerprint: str
    ctx_len: int
    max_k: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    prefill_seq_len: int
    full_batch_size: int
    method: str
    executor: str
    device: str
    draft_tokenizer_fingerprint: str
    def __init__(self, model_id: _Optional[str] = ..., vocab_size: _Optional[int] = ..., tokenizer_fingerprint: _Optional[str] = ..., ctx_len: _Optional[int] = ..., max_k: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., prefill_seq_len: _Optional[int] = ..., full_batch_size: _Optional[int] = ..., method: _Optional[str] = ..., executor: _Optional[str] = ..., device: _Optional[str] = ..., draft_tokenizer_fingerprint: _Optional[str] = ...) -> None: ...

class StepTimings(_message.Message):
    __slots__ = ("queue_ns", "forward_ns", "total_ns", "batch_rows", "batch_window")
    QUEUE_NS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_NS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    BATCH_WINDOW_FIELD_NUMBER: _ClassVar[int]
    queue_ns: int
    forward_ns: int
    total_ns: int
    batch_rows: int
    batch_window: int
    def __init__(self, queue_ns: _Optional[int] = ..., forward_ns: _Optional[int] = ..., total_ns: _Optional[int] = ..., batch_rows: _Optional[int] = ..., batch_window: _Optional[int] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TokenDistribution(_message.Message):
    __slots__ = ("token_ids", "probs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("text", "add_special_tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    add_special_tokens: bool
    def __init__(self, text: _Optional[str] = ..., add_special_tokens: _Optional[bool] = ...) -> None: ...

class TokenizeReply(_message.Message):
    __slots__ = ("ids", "added_special_tokens")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ADDED_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    added_special_tokens: bool
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., added_special_tokens: _Optional[bool] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("ids", "prefix_ids", "skip_special_tokens")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    prefix_ids: _containers.RepeatedScalarFieldContainer[int]
    skip_special_tokens: bool
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., prefix_ids: _Optional[_Iterable[int]] = ..., skip_special_tokens: _Optional[bool] = ...) -> None: ...

class DetokenizeReply(_message.Message):
    __slots__ = ("text", "num_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    num_ids: int
    def __init__(self, text: _Optional[str] = ..., num_ids: _Optional[int] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("text", "token_ids", "method", "k", "adaptive_k", "sampling", "max_new_tokens", "stop", "ignore_eos")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_K_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    method: str
    k: int
    adaptive_k: bool
    sampling: SamplingParams
    max_new_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., method: _Optional[str] = ..., k: _Optional[int] = ..., adaptive_k: _Optional[bool] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("tokens", "text", "finish_reason", "metrics")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finish_reason: FinishReason
    metrics: GenerateMetrics
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., metrics: _Optional[_Union[GenerateMetrics, _Mapping]] = ...) -> None: ...

class GenerateMetrics(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "ttft_s", "decode_time_s", "e2e_time_s", "decode_throughput", "e2e_throughput", "mean_accepted_tokens", "drafted", "accepted", "acceptance_rate", "acceptance_by_position", "pre_draft_hits", "k_histogram", "recoveries", "draft_length_histogram")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    E2E_TIME_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    E2E_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_BY_POSITION_FIELD_NUMBER: _ClassVar[int]
    PRE_DRAFT_HITS_FIELD_NUMBER: _ClassVar[int]
    K_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    RECOVERIES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_LENGTH_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    decode_time_s: float
    e2e_time_s: float
    decode_throughput: float
    e2e_throughput: float
    mean_accepted_tokens: float
    drafted: int
    accepted: int
    acceptance_rate: float
    acceptance_by_position: _containers.RepeatedScalarFieldContainer[float]
    pre_draft_hits: int
    k_histogram: _containers.RepeatedScalarFieldContainer[int]
    recoveries: int
    draft_length_histogram: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., ttft_s: _Optional[float] = ..., decode_time_s: _Optional[float] = ..., e2e_time_s: _Optional[float] = ..., decode_throughput: _Optional[float] = ..., e2e_throughput: _Optional[float] = ..., mean_accepted_tokens: _Optional[float] = ..., drafted: _Optional[int] = ..., accepted: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., acceptance_by_position: _Optional[_Iterable[float]] = ..., pre_draft_hits: _Optional[int] = ..., k_histogram: _Optional[_Iterable[int]] = ..., recoveries: _Optional[int] = ..., draft_length_histogram: _Optional[_Iterable[int]] = ...) -> None: ...

class VerifierRequest(_message.Message):
    __slots__ = ("prefill", "verify")
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    prefill: Prefill
    verify: Verify
    def __init__(self, prefill: _Optional[_Union[Prefill, _Mapping]] = ..., verify: _Optional[_Union[Verify, _Mapping]] = ...) -> None: ...

class Prefill(_message.Message):
    __slots__ = ("start", "tokens", "max_new_tokens", "ignore_eos", "draft_tokenizer_fingerprint", "sampling")
    START_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    start: int
    tokens: _containers.RepeatedScalarFieldContainer[int]
    max_new_tokens: int
    ignore_eos: bool
    draft_tokenizer_fingerprint: str
    sampling: SamplingParams
    def __init__(self, start: _Optional[int] = ..., tokens: _Optional[_Iterable[int]] = ..., max_new_tokens: _Optional[int] = ..., ignore_eos: _Optional[bool] = ..., draft_tokenizer_fingerprint: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class Verify(_message.Message):
    __slots__ = ("draft_tokens", "draft_probs")
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    draft_tokens: _containers.RepeatedScalarFieldContainer[int]
    draft_probs: _containers.RepeatedCompositeFieldContainer[TokenDistribution]
    def __init__(self, draft_tokens: _Optional[_Iterable[int]] = ..., draft_probs: _Optional[_Iterable[_Union[TokenDistribution, _Mapping]]] = ...) -> None: ...

class VerifierReply(_message.Message):
    __slots__ = ("tokens", "num_accepted_drafts", "num_drafted", "finish_reason", "timings", "sequence_len", "next_draft", "sessions_active")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFTED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LEN_FIELD_NUMBER: _ClassVar[int]
    NEXT_DRAFT_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    num_accepted_drafts: int
    num_drafted: int
    finish_reason: FinishReason
    timings: StepTimings
    sequence_len: int
    next_draft: _containers.RepeatedScalarFieldContainer[int]
    sessions_active: int
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., num_accepted_drafts: _Optional[int] = ..., num_drafted: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., timings: _Optional[_Union[StepTimings, _Mapping]] = ..., sequence_len: _Optional[int] = ..., next_draft: _Optional[_Iterable[int]] = ..., sessions_active: _Optional[int] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("start", "tokens", "k", "sampling", "top_m")
    START_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TOP_M_FIELD_NUMBER: _ClassVar[int]
    start: int
    tokens: _containers.RepeatedScalarFieldContainer[int]
    k: int
    sampling: SamplingParams
    top_m: int
    def __init__(self, start: _Optional[int] = ..., tokens: _Optional[_Iterable[int]] = ..., k: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., top_m: _Optional[int] = ...) -> None: ...

class ProposeReply(_message.Message):
    __slots__ = ("draft_tokens", "timings", "held_len", "draft_probs", "pre_drafted")
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    HELD_LEN_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    PRE_DRAFTED_FIELD_NUMBER: _ClassVar[int]
    draft_tokens: _containers.RepeatedScalarFieldContainer[int]
    timings: StepTimings
    held_len: int
    draft_probs: _containers.RepeatedCompositeFieldContainer[TokenDistribution]
    pre_drafted: bool
    def __init__(self, draft_tokens: _Optional[_Iterable[int]] = ..., timings: _Optional[_Union[StepTimings, _Mapping]] = ..., held_len: _Optional[int] = ..., draft_probs: _Optional[_Iterable[_Union[TokenDistribution, _Mapping]]] = ..., pre_drafted: _Optional[bool] = ...) -> None: ...
