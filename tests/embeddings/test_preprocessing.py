"""Preprocessing: tokenisation limits for text, shape and dtype for numeric arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings import ArrayPreprocessor, PayloadError, TextPreprocessor


@pytest.fixture(scope="module")
def tokenizer(minilm_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path, local_files_only=True)


LONG = " ".join(["word"] * 200)


def test_text_is_truncated_to_max_length(tokenizer) -> None:
    pre = TextPreprocessor(tokenizer, max_length=16)
    texts = pre.validate(["short text", {"text": LONG}])
    batch = pre.prepare(texts)
    assert batch.kwargs["input_ids"].shape == (2, 16)
    assert batch.attention_mask.sum(dim=1).tolist() == [4, 16]  # [CLS] short text [SEP]
    assert len(batch) == 2


def test_without_truncation_a_long_text_is_an_error(tokenizer) -> None:
    pre = TextPreprocessor(tokenizer, max_length=16, truncation=False)
    with pytest.raises(PayloadError, match="202 tokens is longer than max_length=16"):
        pre.prepare(pre.validate([LONG]))


def test_text_payloads_must_be_text(tokenizer) -> None:
    pre = TextPreprocessor(tokenizer, max_length=16)
    with pytest.raises(
        PayloadError, match=r"payload 1: expected a str or \{'text': str\}, got int"
    ):
        pre.validate(["ok", 3])
    with pytest.raises(
        PayloadError, match=r"payload 0: .*got a mapping with keys \['array'\]"
    ) as info:
        pre.validate([{"array": [1.0]}])
    assert info.value.index == 0


def test_lowercase_and_settings(tokenizer) -> None:
    pre = TextPreprocessor(tokenizer, max_length=8, lowercase=True, tokenizer_sha256="abc")
    assert pre.validate(["MiXeD"]) == ["mixed"]
    assert pre.settings == {
        "kind": "text",
        "tokenizer": type(tokenizer).__name__,
        "tokenizer_sha256": "abc",
        "max_length": 8,
        "truncation": True,
        "lowercase": True,
        "padding_side": "right",
    }
    np.testing.assert_array_equal(pre.lengths(["ab", "abcd"]), [2, 4])
    with pytest.raises(ValueError, match="max_length must be an int >= 2"):
        TextPreprocessor(tokenizer, max_length=1)


def test_arrays_of_the_configured_shape_nested_flat_or_in_a_mapping() -> None:
    pre = ArrayPreprocessor((2, 3))
    nested = [[1, 2, 3], [4, 5, 6]]
    out = pre.validate([nested, list(range(6)), {"array": np.arange(6.0)}, np.ones((2, 3))])
    assert out.shape == (4, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], np.arange(6).reshape(2, 3))
    whole = np.zeros((5, 2, 3))
    assert pre.validate(whole).shape == (5, 2, 3)
    assert pre.prepare(out).args[0].shape == (4, 2, 3)
    assert pre.lengths(out) is None


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (
            [1, 2, 3, 4, 5],
            r"payload 1: expected shape \(2, 3\) \(or 6 values flat\), got shape \(5,\)",
        ),
        ([[1, 2], [3, 4], [5, 6]], r"expected shape \(2, 3\) .*got shape \(3, 2\)"),
        ("123456", "expected a numeric array of shape"),
        ({"text": "x"}, "got a mapping with keys"),
        (["a"] * 6, "expected numbers, got dtype <U1"),
        ([[1, 2, 3], [4, 5]], "not a rectangular array"),
        ([np.nan] * 6, "payload 1: contains NaN or infinite values"),
    ],
)
def test_a_payload_that_does_not_fit_names_expected_and_actual(payload, match) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        ArrayPreprocessor((2, 3)).validate([list(range(6)), payload])
    assert info.value.index == 1


def test_integer_dtype_and_bad_options() -> None:
    out = ArrayPreprocessor(4, dtype="int64").validate([[1, 2, 3, 4]])
    assert out.dtype == np.int64 and out.shape == (1, 4)
    for shape in [(), (0,), (2, -1), ("a",)]:
        with pytest.raises(ValueError, match="shape must be"):
            ArrayPreprocessor(shape)
    with pytest.raises(ValueError, match="dtype must be numeric"):
        ArrayPreprocessor((2,), dtype="str")
    with pytest.raises(ValueError, match="dtype must be a numeric numpy dtype"):
        ArrayPreprocessor((2,), dtype="nonsense")
