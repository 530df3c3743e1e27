"""The HTML report: self-contained, and it works in a real (headless chromium) browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctxray.inference.html import ReportPage, display_grid, page_data, render_html, write_report_html

from .infer_browser import Browser, chromium_path

NASTY = "Heart normal. </script><script>document.title='pwned'</script> <b>bold</b>"


def _page(shape=(20, 36, 44)) -> ReportPage:
    rng = np.random.default_rng(0)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    hu = np.full(shape, -850.0) + rng.normal(0, 20, shape)
    hu[:, :, :3] = 60.0  # a soft-tissue wall on one side
    lesion = (zz - 10) ** 2 + (yy - 12) ** 2 + (xx - 30) ** 2 <= 16
    hu[lesion] = 40.0
    heat = np.exp(-((zz - 10) ** 2 + (yy - 12) ** 2 + (xx - 30) ** 2) / 20.0)
    findings = [
        {"label": "Lung nodule", "probability": 0.91, "threshold": 0.42, "decision": True},
        {"label": "Emphysema", "probability": 0.12, "threshold": 0.5, "decision": False},
    ]
    return ReportPage(scan="case_001", hu=hu.astype(np.float32), spacing_zyx=(2.0, 1.0, 1.0), findings=findings,
                      maps={"Lung nodule": heat.astype(np.float32)}, report=NASTY, report_source="test",
                      limits="Research use; not a medical device.", method="test method", provenance="test")


def test_display_grid_respects_budget():
    assert display_grid((10, 20, 30), 10**6) == (10, 20, 30)
    shape = display_grid((300, 512, 512), 4_000_000)
    assert np.prod(shape) <= 4_000_000
    assert shape[1] == shape[2] and shape[0] < shape[1]  # uniform scale keeps proportions


def test_page_data_roundtrip_and_downsampling():
    page = _page()
    data = page_data(page, max_voxels=10**6)
    import base64

    vol = np.frombuffer(base64.b64decode(data["volume"]), dtype="<i2").reshape(data["shape"])
    np.testing.assert_allclose(vol, np.rint(page.hu), atol=0.5)
    heat = np.frombuffer(base64.b64decode(data["overlays"][0]["data"]), np.uint8).reshape(data["overlay_shape"])
    assert data["overlay_shape"] == data["shape"]  # within budget: full resolution
    assert np.unravel_index(heat.argmax(), heat.shape) == (10, 12, 30)
    small = page_data(page, max_voxels=4000)
    assert np.prod(small["shape"]) <= 4000 and np.prod(small["overlay_shape"]) <= 500
    heat = np.frombuffer(base64.b64decode(small["overlays"][0]["data"]), np.uint8).reshape(small["overlay_shape"])
    frac = (np.array(np.unravel_index(heat.argmax(), heat.shape)) + 0.5) / heat.shape
    np.testing.assert_allclose(frac, (np.array([10, 12, 30]) + 0.5) / page.hu.shape, atol=0.12)
    # physical extent is kept when the display grid is coarser
    np.testing.assert_allclose(np.array(small["shape"]) * small["spacing"], np.array(page.hu.shape) * (2, 1, 1),
                               rtol=0.15)


def test_map_shape_mismatch_is_an_error():
    page = _page()
    page.maps = {"Lung nodule": np.zeros((2, 2, 2), np.float32)}
    with pytest.raises(ValueError, match="Lung nodule"):
        page_data(page)


def test_html_is_self_contained():
    html = render_html(_page())
    assert "__CTXRAY_DATA__" not in html
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)
    assert "http://" not in html and "https://" not in html
    # the report text cannot close the data block: '<' is escaped inside the JSON
    block = html.split('id="ctxray-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block)["report"] == NASTY


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (scripts/setup.sh --dev installs it "
                    "where apt and root are available)")
def test_html_in_headless_chromium(tmp_path):
    pytest.importorskip("websocket", reason="websocket-client (requirements-dev.txt) is needed to drive chromium")
    # 40k voxels: the volume at full resolution, the overlay on a coarser grid (its own lookup in JS)
    path = write_report_html(tmp_path / "report.html", _page(), max_voxels=40_000)
    browser = Browser(tmp_path / "profile")
    try:
        browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        browser.send("Page.navigate", url=path.resolve().as_uri())
        browser.wait_event("Page.loadEventFired")
        assert browser.eval("!!(window.ctxrayViewer && window.ctxrayViewer.ready)")
        assert browser.eval("document.title") == "ctxray report"  # the injected script did not run
        assert browser.eval("document.getElementById('report').textContent") == NASTY
        stats = """(() => { const c = document.getElementById('canvas-axial');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let h = 0, colored = 0;
            for (let i = 0; i < d.length; i += 4) { h = (h * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 1000000007;
              if (Math.abs(d[i] - d[i + 2]) > 8) colored++; }
            return [h, colored]; })()"""
        h0, colored0 = browser.eval(stats)
        assert colored0 == 0  # no overlay before a toggle
        # a slider change changes the shown slice
        browser.eval("(() => { const s = document.getElementById('slider-axial'); s.value = 3;"
                     " s.dispatchEvent(new Event('input')); })()")
        h1, _ = browser.eval(stats)
        assert h1 != h0
        assert browser.eval("document.getElementById('idx-axial').textContent").startswith("z = 3 ")
        # back to the lesion's slice, then toggle the finding's overlay
        browser.eval("(() => { const s = document.getElementById('slider-axial'); s.value = 10;"
                     " s.dispatchEvent(new Event('input')); })()")
        browser.eval("document.querySelector('input.overlay-toggle[data-label=\"Lung nodule\"]').click()")
        _, colored1 = browser.eval(stats)
        assert colored1 > 10
        # window presets exist and change the picture
        browser.eval("document.getElementById('window-bone').click()")
        h2, _ = browser.eval(stats)
        assert h2 != h1
        browser.eval("document.getElementById('window-lung').click()")
        # clicking the lesion in the axial view moves the coronal and sagittal slices onto it (y=12, x=30)
        rect = browser.eval("(() => { const b = document.getElementById('canvas-axial').getBoundingClientRect();"
                            " return [b.left, b.top, b.width, b.height]; })()")
        shape = browser.eval("window.ctxrayViewer.shape")
        row, col = shape[1] - 1 - 12, shape[2] - 1 - 30  # radiological display: flipped rows and columns
        px, py = rect[0] + (col + 0.5) / shape[2] * rect[2], rect[1] + (row + 0.5) / shape[1] * rect[3]
        for kind in ("mousePressed", "mouseReleased"):
            browser.send("Input.dispatchMouseEvent", type=kind, x=px, y=py, button="left", clickCount=1)
        assert browser.eval("document.getElementById('slider-coronal').value") == "12"
        assert browser.eval("document.getElementById('slider-sagittal').value") == "30"
        shot = browser.screenshot(tmp_path / "report.png")
        shutil.copy(shot, Path("/tmp") / "ctxray_report_screenshot.png")
        assert shot.stat().st_size > 10_000
        assert browser.console_errors() == []
        external = [u for u in browser.requested_urls() if not u.startswith(("file:", "data:", "about:"))]
        assert external == []
    finally:
        browser.close()
