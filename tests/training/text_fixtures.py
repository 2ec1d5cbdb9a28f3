"""Tiny text classifiers built in the test (nothing downloaded) and a keyword concept shift.

The vocabulary is a small local file; the models are randomly initialised BERTs (hidden 32,
2 layers). Before the drift the texts talk about food and the label is whether "red"
(rather than "green") is in them ("blue" and "yellow" occur at random); after it they talk
about machines and the label is whether "blue" (rather than "yellow") is: a model trained
before the drift is right about half the time, one retrained with replay learns both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training import LabelledRows
from training.text import SentenceClassifier, SequenceClassifier

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FOOD = ["apple", "bread", "cheese", "dough", "eggs", "flour", "grape", "honey"]
MACHINES = ["engine", "gear", "piston", "valve", "wheel", "brake", "clutch", "axle"]
FILLER = ["the", "a", "is", "and", "with", "of"]
KEYWORDS = {"before": ("red", "green"), "after": ("blue", "yellow")}
VOCAB = [*SPECIAL, *FOOD, *MACHINES, *FILLER, "red", "green", "blue", "yellow"]
MAX_LENGTH = 16


def texts(n: int, *, drifted: bool, seed: int) -> LabelledRows:
    """``n`` labelled texts of one regime, event times 0..n-1."""
    rng = np.random.default_rng(seed)
    topic = MACHINES if drifted else FOOD
    yes, no = KEYWORDS["after" if drifted else "before"]
    y = rng.integers(0, 2, n)
    out = []
    for label in y:
        words = [str(w) for w in rng.choice(topic, 4)] + [str(rng.choice(FILLER))]
        if not drifted and rng.random() < 0.5:
            # the new keywords occur before the drift too, meaning nothing yet: a deployed
            # model knows every word (as a pretrained one would)
            words.append(str(rng.choice(KEYWORDS["after"])))
        words.insert(int(rng.integers(0, len(words) + 1)), yes if label else no)
        out.append(" ".join(words))
    return LabelledRows(np.asarray(out, dtype=object), y.astype(np.int64),
                        np.arange(n, dtype=np.float64))


def tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    """A BERT WordPiece tokenizer over the local vocabulary (written to ``folder``)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    ids = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]),
                                                 ("[SEP]", ids["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                   pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]", model_max_length=MAX_LENGTH)


def _config(n_labels: int = 2):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=MAX_LENGTH * 2, num_labels=n_labels)


def sequence_classifier(work: Path, seed: int = 0) -> SequenceClassifier:
    """A random BertForSequenceClassification with the local vocabulary's tokenizer."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return SequenceClassifier(BertForSequenceClassification(_config()).eval(),
                              tokenizer(work / "tok"), MAX_LENGTH)


def sentence_classifier(work: Path, seed: int = 0) -> SentenceClassifier:
    """A random BERT encoder, mean pooling and a linear head."""
    from transformers import BertModel

    torch.manual_seed(seed)
    encoder = BertModel(_config()).eval()
    return SentenceClassifier(encoder, torch.nn.Linear(32, 2), tokenizer(work / "tok"),
                              MAX_LENGTH, pooling="mean", normalize=False)
