"""``driftline report``: the stored per-window feature summaries, the HTML page (content,
self-containment, errors), and the page rendered in headless Chromium (Debian ``chromium``)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from monitor.cli import main
from monitor.demo import DemoOptions, run_demo
from monitor.storage import StorageReader

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "report-screenshot.png"
DRIFT_RGB, OK_RGB = (0xD6, 0x27, 0x28), (0x2C, 0xA0, 0x2C)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    summary = run_demo(DemoOptions(workdir=work, records=16_000, window=2_000, drift_at=10_000,
                                   metrics_port=0, bad_every=0), out=io.StringIO())
    assert summary["detected_window"] == 5
    return work / "driftline.db"


@pytest.fixture(scope="module")
def report(demo_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", "--db", f"sqlite:///{demo_db}", "--output", str(out)]) == 0
    return out


def test_each_window_stores_a_bounded_summary_per_feature(demo_db: Path) -> None:
    with StorageReader(f"sqlite:///{demo_db}") as reader:
        wrs = reader.window_results("credit-risk")
    assert len(wrs) == 8
    for wr in wrs:
        summaries = {f.feature: f.summary for r in wr.results for f in r.features if f.summary}
        assert set(summaries) == {"income", "age", "loan_amount", "tenure_months",
                                  "credit_score", "country", "channel"}
        income = summaries["income"]
        assert income["kind"] == "numeric" and len(income["edges"]) == 21
        assert len(income["reference"]) == len(income["current"]) == 20
        assert sum(income["current"]) + income["current_below"] + income["current_above"] \
            == wr.window.n_records
        country = summaries["country"]
        assert country["kind"] == "categorical" and len(country["categories"]) <= 20
        assert sum(country["current"]) + country["current_other"] == wr.window.n_records
        # stored once per window, with the feature's first result
        assert sum(1 for r in wr.results for f in r.features if f.summary) == len(summaries)
    before, after = wrs[0], wrs[-1]
    means = [next(f.summary for r in w.results for f in r.features
                  if f.feature == "income" and f.summary)["current_mean"]
             for w in (before, after)]
    assert means[1] > means[0]  # the injected shift shows in the summary


def test_report_shows_when_drift_started_and_which_features_moved(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert "Drift started in" in page and 'href="#w-credit-risk-features-5">window 5</a>' in page
    assert re.search(r"features that moved: <b>[^<]*income", page)
    # every feature of a detailed window, with raw and corrected p-values and the verdict
    section = page.split('id="w-credit-risk-features-5"')[1].split("</section>")[0]
    for feature in ("income", "age", "country", "channel"):
        assert f'data-feature="{feature}"' in section
    assert "corrected p" in section and "raw p" in section and "What drove it:" in section
    assert "&alpha; 0.01 (bonferroni)" in section
    assert section.count("<svg") >= 7  # one picture per feature
    assert page.count('class="png"') == page.count("<figure")


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert "<script src" not in page and "<link" not in page and "@import" not in page
    urls = set(re.findall(r"(?:src|href)=\"([^\"#][^\"]*)\"", page))
    assert urls == set(), urls  # nothing but in-page anchors
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}


def test_report_options_and_errors(demo_db: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{demo_db}"
    out = tmp_path / "r.html"
    assert main(["report", "--db", db, "--model", "credit-risk", "--first", "4", "--last", "6",
                 "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "Windows 4 to 6 (3 stored" in page and 'id="w-credit-risk-features-3"' not in page
    capsys.readouterr()
    assert main(["report", "--db", db, "--model", "fraud", "-o", str(out)]) == 2
    assert "unknown model 'fraud'; sqlite:///" in capsys.readouterr().err
    assert main(["report", "--db", db, "--first", "50", "-o", str(out)]) == 2
    assert "no windows in the range 50.. (stored: windows 0 to 7)" in capsys.readouterr().err
    assert main(["report", "--db", db, "--first", "5", "--last", "2", "-o", str(out)]) == 2
    assert "empty window range" in capsys.readouterr().err
    assert main(["report", "--db", f"sqlite:///{tmp_path}/none.db", "-o", str(out)]) == 2
    assert "no such database file" in capsys.readouterr().err


def test_report_with_many_windows_details_the_ones_that_matter() -> None:
    from monitor.htmlreport import detailed_positions
    from monitor.storage.reader import StoredResult, StoredWindow, WindowResults

    def wr(i: int, drifted: bool) -> WindowResults:
        w = StoredWindow("m", "features", i, i, i + 1, 10, {}, None, None)  # type: ignore[arg-type]
        r = StoredResult("m", "features", i, "ks", 0.5, 0.5, 0.05, drifted, False, "none", 10,
                         10, ())
        return WindowResults(w, (r,))
    wins = [wr(i, 40 <= i < 45 or i == 70) for i in range(100)]
    chosen = detailed_positions(wins, 8)
    assert chosen == [39, 40, 41, 45, 69, 70, 71, 99]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium "
                    "(scripts/install-test-deps.sh installs it)")
    return exe


def _headless(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    exe = _chromium()
    url = report.resolve().as_uri()
    dom = _headless(exe, tmp_path / "p1", "--virtual-time-budget=5000", "--dump-dom",
                    url + "#selftest")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Nothing on the console (errors, warnings, logs) and no uncaught exception.
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert console == [], console
    assert not re.search(r"<body[^>]*data-js-error", dom.stdout)
    # The PNG export draws an SVG onto a canvas: it worked in the browser.
    assert re.search(r'<pre id="selftest" hidden="">data:image/png;base64,', dom.stdout), \
        dom.stdout[-500:]
    assert dom.stdout.count("<svg") > 20

    shot = tmp_path / "shot.png"
    done = _headless(exe, tmp_path / "p2", "--window-size=1280,2400", f"--screenshot={shot}",
                     url)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
    pixels = Counter(map(tuple, rgb.tolist()))
    # The timeline's red (drift) and green (no drift) cells, and the paired reference
    # (blue) and window (orange) bars of the feature plots, are on screen.
    assert pixels[DRIFT_RGB] > 2000 and pixels[OK_RGB] > 2000
    blue = sum(n for (r, g, b), n in pixels.items() if b > 150 and r < 150 and b - r > 60)
    orange = sum(n for (r, g, b), n in pixels.items() if r > 230 and 130 < g < 190 and b < 90)
    assert blue > 5000 and orange > 5000
    assert pixels[(255, 255, 255)] < 0.9 * sum(pixels.values())  # not a blank page
    if os.environ.get("DRIFTLINE_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_report_help_has_an_example() -> None:
    out = subprocess.run([sys.executable, "-m", "monitor.cli", "report", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    text = "".join(out.stdout.split())
    assert "example:driftlinereport--db" in text
    assert "(default:driftline-report.html;" in text


def test_report_shows_label_performance_label_shift_and_distances(tmp_path: Path) -> None:
    import time as _time

    from detectors import DriftResult, FeatureResult
    from monitor.htmlreport import build_report
    from monitor.report import WindowReport
    from monitor.storage import SqlStore

    url = f"sqlite:///{tmp_path / 'l.db'}"
    store = SqlStore(url)
    store.migrate()
    for i in range(4):
        shifted = i >= 2
        weights = (FeatureResult("0", 0.6 if shifted else 1.0, 0.01, 0.02, shifted, 500, 400),
                   FeatureResult("1", 1.5 if shifted else 1.0, 0.01, 0.02, shifted, 500, 400))
        psi = DriftResult("psi", 0.3 if shifted else 0.05, None, 0.2, shifted, 500, 400, "none",
                          (FeatureResult("income", 0.3 if shifted else 0.05, None, None,
                                         shifted, 500, 400),))
        store.write(WindowReport("clf", i, 100.0 * i, 100.0 * i + 99, 400,
                                 (DriftResult("label_shift", 1.5, 0.02, 0.05, shifted, 500, 400,
                                              "bonferroni", weights), psi),
                                 {("t", 0): (i * 400, i * 400 + 399)}, _time.time()))
        store.write(WindowReport("clf", i, 100.0 * i, 100.0 * i + 99, 300,
                                 (DriftResult("performance", 0.1 + 0.1 * shifted,
                                              0.3 if not shifted else 1e-4, 0.05, shifted, 500,
                                              300, "none", (FeatureResult(
                                                  "error_rate", 0.1, 0.3, 0.3, shifted, 500,
                                                  300),)),),
                                 {("labels", 0): (i * 300, i * 300 + 299)}, _time.time(),
                                 stream="labels"))
    store.flush()
    store.close()
    with StorageReader(url) as reader:
        page = build_report(reader, source="test")
    assert "Label-shift weights" in page and "weight q(y)/p(y)" in page
    assert "Delayed-label performance" in page and "performance" in page
    assert 'id="w-clf-labels-3"' in page
    assert "psi distance against its threshold per window" in page
    assert "income (0.3 &gt; 0.2)" in page  # what drove the distance verdict
    assert "distance &gt; 0.2" in page
