"""The HTML report of the default gate's real run, opened in headless Chromium (Debian's `chromium`).

The page must load without a console message, a `<script>` planted in a model answer must stay text, and a
screenshot must show the banner, the metrics and the heatmaps. A multi-family run's report (what changed, recall per
task and length, the loss curve, timed runs) must load as cleanly and draw its loss chart. Without chromium (or Pillow) the tests skip
locally, and fail when `CI` is set: `.ci/run` installs both.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_longctx.gate.results import load_results
from pytest_longctx.output.charts import loss_chart
from pytest_longctx.output.colours import VARIANT_COLOURS, VERDICT_COLOURS, diverging_colour, sequential_colour
from pytest_longctx.output.report import write_html

FP8_RESULTS = Path(__file__).parents[1] / "data" / "fp8-results.json"
FAMILIES_RESULTS = Path(__file__).parents[1] / "data" / "families-results.json"  # six task families, a loss curve
PAYLOAD = ("<script>document.title='pwned';document.body.setAttribute('data-pwned','1');console.log('pwned')</script>"
           "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]
WIDTH, HEIGHT = 1400, 3000


def _missing(what: str, install: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing but CI is set: the browser test must run in CI ({install}; .ci/run does it)")
    pytest.skip(f"{what} is not installed ({install}); CI installs it and runs this test")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("chromium", "apt-get install -y chromium")
    return str(path)


def _run(chromium: str, tmp: Path, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh, empty profile for every start
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def _console(stderr: str) -> list[str]:
    """What the page said on the console (logs, errors, CSP refusals) as Chromium logs it to stderr."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line or "Refused to" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real run's report with the payload planted in one candidate answer and one prompt excerpt."""
    results = load_results(FP8_RESULTS)
    cells = list(results.cells)
    i = next(i for i, c in enumerate(cells) if c.variant == "candidate" and not c.found)
    cells[i] = dataclasses.replace(cells[i], answer=PAYLOAD)
    cells[i + 1] = dataclasses.replace(cells[i + 1], excerpt="before the needle " + PAYLOAD + " after it")
    path = tmp_path_factory.mktemp("report") / "fp8.html"
    write_html(dataclasses.replace(results, cells=tuple(cells)), path)
    return path


def test_the_detector_sees_a_script_that_runs(chromium: str, tmp_path: Path) -> None:
    """Control: the same payload, unescaped, does run and log; so the checks below can see a failure."""
    page = tmp_path / "unsafe.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>control</title></head><body>{PAYLOAD}</body></html>")

    out = _run(chromium, tmp_path, page, "--dump-dom")

    assert "<title>pwned</title>" in out.stdout and "data-pwned" in out.stdout
    assert any("pwned" in line for line in _console(out.stderr))


def test_report_loads_without_console_messages_and_the_planted_script_is_inert(chromium: str, report: Path, tmp_path: Path) -> None:
    out = _run(chromium, tmp_path, report, "--dump-dom")

    assert out.returncode == 0, out.stderr[-2000:]
    assert _console(out.stderr) == []
    dom = out.stdout
    assert "<title>longctx gate fp8-kv-cache: reject</title>" in dom
    assert "data-pwned" not in dom.split("&lt;script&gt;")[0]  # nothing set the attribute on <body>
    assert 'data-pwned="' not in dom and "<script" not in dom and "<img" not in dom
    assert dom.count("&lt;script&gt;document.title='pwned'") == 2  # shown as text, in the answer and the excerpt
    for section in ("decision", "metrics", "heatmaps", "latency", "memory", "cells", "environment"):
        assert f'<section id="{section}"' in dom


def test_screenshot_shows_banner_metrics_and_heatmaps(chromium: str, report: Path, tmp_path: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        _missing("Pillow", "pip install -e '.[dev]'")
    shot = Path(os.environ.get("LONGCTX_SCREENSHOT", tmp_path / "report.png"))  # set it to keep the picture

    out = _run(chromium, tmp_path, report, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}")

    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 100_000
    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)

    def rows_with(colour: str, at_least: int = 1) -> list[int]:
        """The pixel rows in which `colour` fills at least `at_least` pixels."""
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        pixels = image.load()
        return [y for y in range(0, HEIGHT, 2) if sum(1 for x in range(0, WIDTH, 2) if pixels[x, y] == rgb) >= at_least]

    banner = rows_with(VERDICT_COLOURS["reject"], at_least=200)  # a wide block of the verdict's colour
    assert banner and min(banner) < 60 and 120 < max(banner) - min(banner) < 400
    metrics_fail = rows_with(VERDICT_COLOURS["reject"])  # the "✗ fail" marks in the metrics table, under the banner
    assert any(max(banner) + 60 < y < max(banner) + 700 for y in metrics_fail)
    heat = [rows_with(sequential_colour(v), at_least=10) for v in (0.5, 1.0)] + [rows_with(diverging_colour(-0.5), at_least=10)]
    assert all(heat), "the heatmaps' viridis and difference colours are on screen"
    assert min(min(rows) for rows in heat) > max(banner) + 200  # below the banner and the metrics
    latency = [rows_with(colour) for colour in VARIANT_COLOURS]
    assert all(latency) and min(latency[1]) > max(max(rows) for rows in heat)
    assert len(image.resize((140, 300)).getcolors(maxcolors=100_000) or ()) > 200  # a real page, not a blank


@pytest.fixture(scope="module")
def families_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multi-family run's report, with the payload planted in one candidate answer."""
    results = load_results(FAMILIES_RESULTS)
    cells = list(results.cells)
    i = next(i for i, c in enumerate(cells) if c.variant == "candidate" and c.failure == "partial")
    cells[i] = dataclasses.replace(cells[i], answer=PAYLOAD)
    path = tmp_path_factory.mktemp("report") / "families.html"
    write_html(dataclasses.replace(results, cells=tuple(cells)), path)
    return path


def test_families_report_loads_without_console_messages(chromium: str, families_report: Path, tmp_path: Path) -> None:
    out = _run(chromium, tmp_path, families_report, "--dump-dom")

    assert out.returncode == 0, out.stderr[-2000:]
    assert _console(out.stderr) == []
    dom = out.stdout
    assert "<title>longctx gate yarn-families: reject</title>" in dom
    assert 'data-pwned="' not in dom and "<script" not in dom and "<img" not in dom
    for section in ("decision", "changes", "metrics", "recall", "heatmaps", "loss", "latency", "memory", "cells", "environment"):
        assert f'<section id="{section}"' in dom
    assert dom.count('<path class="series"') == 2 and dom.count('class="worst-band"') == 1
    assert dom.count("effective length</span>") == 2 and "position-free" in dom and "3 timed runs:" in dom


def test_screenshot_shows_the_loss_curves_and_the_worst_bucket(chromium: str, families_report: Path, tmp_path: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        _missing("Pillow", "pip install -e '.[dev]'")
    shot = tmp_path / "families.png"
    height = 6000  # down past the heatmaps of six tasks to the loss chart

    out = _run(chromium, tmp_path, families_report, f"--screenshot={shot}", f"--window-size={WIDTH},{height}")

    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    pixels = image.load()
    chart = loss_chart(load_results(FAMILIES_RESULTS))
    assert chart is not None and chart.worst_x is not None

    def columns_of(colour: str, y: int) -> list[int]:
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return [x for x in range(WIDTH) if pixels[x, y] == rgb]

    band = [y for y in range(0, height, 2) if len(columns_of("#fbe3d6", y)) >= 0.8 * chart.worst_w]
    assert band, "the worst bucket's band is on screen"
    assert chart.plot_bottom - chart.plot_top - 8 <= max(band) - min(band) <= chart.plot_bottom - chart.plot_top + 2
    inside = range(min(band), max(band) + 1, 2)
    for colour in VARIANT_COLOURS:  # both curves are drawn through the plot the band spans
        assert sum(1 for y in inside if columns_of(colour, y)) > 20
