"""Stop strings (pure: where the text ends, what may be streamed before that is known) and chat
templates (the tokenizer's own, or a clear error)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from specdec.chat_template import apply_chat_template
from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.stop_strings import StopCut, check_stop_strings, cut_at_stop_string, earliest_stop, pending_len

TARGET = Path(__file__).resolve().parent.parent / "models" / "target"


def ends(pieces: list[str]) -> tuple[str, list[int]]:
    """The text of token pieces and each token's end in it."""
    text, out = "", []
    for p in pieces:
        text += p
        out.append(len(text))
    return text, out


def test_earliest_stop_wins_and_longest_at_a_tie():
    assert earliest_stop("abc END x STOP", ["STOP", "END"]) == (4, 7)
    assert earliest_stop("abcdef", ["cd", "cde"]) == (2, 5)
    assert earliest_stop("abcdef", ["zz"]) is None
    assert earliest_stop("abab", ["ab"], start=1) == (2, 4)


def test_pending_is_the_longest_suffix_that_starts_a_stop_string():
    assert pending_len("hello wor", ["world"]) == 3
    assert pending_len("hello w", ["world", "xyz"]) == 1
    assert pending_len("hello", ["world"]) == 0
    assert pending_len("ab", ["abc", "b"]) == 2   # a whole stop string is not pending: found instead


def test_stop_string_split_across_tokens_cuts_text_before_it_and_tokens_after_it():
    text, token_ends = ends(["x = 1", "\n\n", "de", "f g"])
    cut = cut_at_stop_string(text, token_ends, ["\ndef"])
    # "\ndef" starts inside token 1 and ends inside token 3: text up to it, tokens through 3
    assert cut == StopCut(text.index("\ndef"), 4, True)
    assert text[:cut.text_len] == "x = 1\n"


def test_text_that_could_start_a_stop_string_is_held_back_until_resolved():
    text, token_ends = ends(["print(1)", "\n#"])
    held = cut_at_stop_string(text, token_ends, ["\n##"])
    assert held == StopCut(len("print(1)"), 1, False)   # "\n#" may become "\n##"
    text2, ends2 = ends(["print(1)", "\n#", " note"])
    resolved = cut_at_stop_string(text2, ends2, ["\n##"], start=held.text_len)
    assert resolved == StopCut(len(text2), 3, False)     # it did not: all of it goes out
    final = cut_at_stop_string(text, token_ends, ["\n##"], final=True)
    assert final == StopCut(len(text), 2, False)         # the generation ended: nothing held


def test_no_stop_strings_emits_everything():
    text, token_ends = ends(["a", "", "b"])
    assert cut_at_stop_string(text, token_ends, []) == StopCut(2, 3, False)


@pytest.mark.parametrize("stops", [[""], ["x" * 257], ["s"] * 17])
def test_bad_stop_strings_are_invalid(stops):
    with pytest.raises(InvalidRequest):
        check_stop_strings(stops)


def test_chat_template_is_the_tokenizers_own(tmp_path):
    from transformers import AutoTokenizer

    model = Path(shutil.copytree(TARGET, tmp_path / "target",
                                 ignore=shutil.ignore_patterns("*.safetensors")))
    tok = AutoTokenizer.from_pretrained(model)
    assert not tok.chat_template   # the shipped model has none
    with pytest.raises(PreconditionFailed, match="no chat_template"):
        apply_chat_template(tok, [{"role": "user", "content": "hi"}])
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.save_pretrained(model)
    tok = AutoTokenizer.from_pretrained(model)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "def f"}]
    assert apply_chat_template(tok, messages) == "<system>be brief\n<user>def f\n<assistant>"
    with pytest.raises(InvalidRequest, match="role"):
        apply_chat_template(tok, [{"role": "robot", "content": "x"}])
    with pytest.raises(InvalidRequest, match="empty"):
        apply_chat_template(tok, [])
