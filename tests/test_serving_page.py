"""The page of `deeplab serve` at `/` in a real headless Chromium (Selenium, Debian's chromium and chromedriver):
the model and its versions listed, a CamVid frame sent through the file input and one dropped on the page, the
overlay canvas read back pixel for pixel against the labels the REST API returns for the same image, coloured by
the export's colormap (or the PASCAL VOC palette without one), and the legend's names and shares; `--web_page=false`
turns it off. Skipped, saying how to install them, where the browser or its driver is missing."""
import asyncio
import base64
import json
import os
import shutil

import httpx
import numpy as np
import pytest

from keras_deeplab import export, viz
from keras_deeplab.serving.contract import EXPORT_INFO_FILE, atomic_path
from keras_deeplab.serving.page import version_legend
from helpers.model_server import deeplab_serve
from helpers.serving_models import CAMVID_FILES, NUM_CLASSES, camvid_frames, camvid_pixels, png_bytes, tiny_deeplab

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
needs_browser = pytest.mark.skipif(
    bool(MISSING), reason=f"browser test skipped: {' and '.join(MISSING)} not installed; install them with "
                          "`bash scripts/install_browser.sh` (as root: apt-get install -y chromium chromium-driver)")
# Without the background-networking flags, Chromium's own connections fail on a closed network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,800")
MODEL = "deeplabv3"
CLASS_NAMES = viz.class_names("camvid") + ["void"]  # the 12 classes of the tiny model
WAIT_SECONDS = 60


def voc_colormap(count=256):
    """The PASCAL VOC devkit's palette, written as the devkit's loop (the page's default colours)."""
    colors = []
    for label in range(count):
        red = green = blue = 0
        value = label
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colors.append((red, green, blue))
    return np.array(colors, np.uint8)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """Version 1 of a tiny model, exported with the CamVid colormap and class names."""
    base = tmp_path_factory.mktemp("saved_models") / MODEL
    export.export_saved_model(tiny_deeplab(), base, max_long_side=128, check_images=camvid_frames()[:1],
                              class_names=CLASS_NAMES, colormap="camvid")
    return base


@pytest.fixture(scope="module")
def server(base_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with deeplab_serve(base_dir, MODEL, log_path, "--file_system_poll_wait_seconds", "0.5") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by Debian's chromedriver (Selenium Manager is never asked for a driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """A CamVid val frame at 128x96 as a PNG file."""
    path = tmp_path_factory.mktemp("images") / "camvid_frame.png"
    path.write_bytes(png_bytes(camvid_pixels(CAMVID_FILES[1], (128, 96))))
    return path


def rest_labels(url, path, version):
    """The label map [H, W] the REST API returns for an image file."""
    body = {"instances": [{"b64": base64.b64encode(path.read_bytes()).decode("ascii")}]}
    reply = httpx.post(f"{url}/v1/models/{MODEL}/versions/{version}:predict", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    prediction = reply.json()["predictions"][0]
    height, width = prediction["image_size"]
    return np.array(prediction["labels"], np.int64)[:height, :width]


def version_state(url, version):
    """A version's state in the REST status, None while the server has not seen it."""
    reply = httpx.get(f"{url}/v1/models/{MODEL}/versions/{version}", timeout=10)
    return reply.json()["model_version_status"][0]["state"] if reply.status_code == 200 else None


def wait_for(driver, condition, what):
    """Waits until `condition(driver)` holds; fails with `what` and the page's status line after WAIT_SECONDS."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.2).until(condition)
    except TimeoutException:
        pytest.fail(f"page: {what} after {WAIT_SECONDS} s (status line: {status_line(driver)!r})")


def status_line(driver):
    return driver.execute_script("return document.getElementById('status').textContent")


def wait_for_result(driver, count):
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.results") == str(count),
             f"result {count} not shown")


def overlay_pixels(driver):
    """The overlay canvas as uint8 [H, W, 4] RGBA, read with getImageData."""
    width, height, data = driver.execute_script(
        "const canvas = document.getElementById('overlay');"
        "const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;"
        "let text = ''; for (let i = 0; i < pixels.length; i++) text += String.fromCharCode(pixels[i]);"
        "return [canvas.width, canvas.height, btoa(text)];")
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)


def legend_rows(driver):
    """[(label, pixels, share, name, share text, swatch colour)] of the legend table, top to bottom."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#legend tbody tr')].map((row) => ["
        "Number(row.dataset.label), Number(row.dataset.pixels), Number(row.dataset.share),"
        "row.cells[1].textContent, row.cells[2].textContent,"
        "getComputedStyle(row.querySelector('.swatch')).backgroundColor]);")


def check_result(driver, labels, colormap, names):
    """The overlay is the label map in `colormap`, opaque, laid over the photo; the legend lists each class present,
    largest share first, with its name, colour, pixel count and share."""
    pixels = overlay_pixels(driver)
    np.testing.assert_array_equal(pixels[..., :3], colormap[labels])
    assert (pixels[..., 3] == 255).all()
    geometry = driver.execute_script(
        "const rect = (id) => document.getElementById(id).getBoundingClientRect().toJSON();"
        "const photo = document.getElementById('photo');"
        "return [rect('photo'), rect('overlay'), photo.naturalWidth, photo.naturalHeight,"
        "getComputedStyle(document.getElementById('overlay')).opacity];")
    photo, overlay, natural_width, natural_height, opacity = geometry
    assert (natural_height, natural_width) == labels.shape  # the browser decoded the image the server saw
    assert {k: round(v, 3) for k, v in photo.items()} == {k: round(v, 3) for k, v in overlay.items()}
    assert 0 < float(opacity) < 1

    classes, counts = np.unique(labels, return_counts=True)
    order = sorted(zip(classes.tolist(), counts.tolist()), key=lambda item: (-item[1], item[0]))
    rows = legend_rows(driver)
    assert [(label, pixels) for label, pixels, *_ in rows] == order
    for label, pixels, share, name, share_text, swatch in rows:
        assert share == pytest.approx(pixels / labels.size, rel=1e-12)
        assert float(share_text.rstrip(" %")) == pytest.approx(100 * pixels / labels.size, abs=0.0051)
        assert name == names[label]
        assert swatch == "rgb({}, {}, {})".format(*colormap[label])


@needs_browser
def test_page_segments_a_chosen_file_like_the_rest_api(server, browser, frame):
    browser.get(f"{server}/")
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('version').value") == "1",
             "version 1 not selectable")
    models = browser.execute_script("return [...document.getElementById('model').options].map((o) => o.value)")
    assert models == [MODEL]
    assert "version 1" in status_line(browser)

    browser.find_element("id", "file").send_keys(str(frame))
    wait_for_result(browser, 1)
    labels = rest_labels(server, frame, 1)
    assert len(np.unique(labels)) > 2  # a real test of the colours: several classes
    check_result(browser, labels, viz.get_colormap("camvid"), CLASS_NAMES)
    text = {key: browser.find_element("id", key).text for key in ("latency", "served", "endpoint")}
    assert text["latency"].split()[1] == "ms" and float(text["latency"].split()[0]) >= 0
    assert text["served"] == f"{MODEL}, version 1"
    assert text["endpoint"] == f"POST /v1/models/{MODEL}/versions/1:predict"


@needs_browser
def test_dropped_image_on_a_new_version_without_export_info_uses_default_palette(server, base_dir, browser, frame):
    """Version 2 (the same SavedModel, with no class names or colormap in its info) appears while the page is
    open; after Refresh it is the selected version, and an image dropped on the page is drawn in VOC colours with
    "class N" names. (Runs after the tests on version 1: the server then retires version 1.)"""
    with atomic_path(base_dir / "2", folder=True) as staging:
        shutil.copytree(base_dir / "1", staging, dirs_exist_ok=True)
        info = json.loads((staging / EXPORT_INFO_FILE).read_text())
        (staging / EXPORT_INFO_FILE).write_text(json.dumps(dict(info, class_names=None, colormap=None)))
    browser.get(f"{server}/")
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('version').value") != "",
             "no version selectable")
    wait_for(browser, lambda d: version_state(server, 2) == "AVAILABLE", "version 2 not served")
    browser.find_element("id", "refresh").click()
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('version').value") == "2",
             "version 2 not selected after Refresh")
    options = browser.execute_script(
        "return [...document.getElementById('version').options].map((o) => [o.value, o.disabled])")
    assert options[0] == ["2", False]
    data = base64.b64encode(frame.read_bytes()).decode("ascii")
    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('dropzone').dispatchEvent("
        "new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));", data)
    wait_for_result(browser, 1)
    check_result(browser, rest_labels(server, frame, 2), voc_colormap(), [f"class {i}" for i in range(NUM_CLASSES)])
    assert browser.find_element("id", "served").text == f"{MODEL}, version 2"


@needs_browser
def test_a_file_that_is_not_an_image_is_refused_in_the_page(server, browser, tmp_path):
    browser.get(f"{server}/")
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('version').value") != "",
             "no version selectable")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    browser.find_element("id", "file").send_keys(str(text_file))
    wait_for(browser, lambda d: "is not an image" in status_line(d), "no error shown for a text file")
    assert browser.execute_script("return document.body.dataset.results") is None


def test_models_json_and_static_files(server):
    listing = httpx.get(f"{server}/page/models.json", timeout=10).json()
    assert [model["name"] for model in listing["models"]] == [MODEL]
    legend = listing["models"][0]["versions"]["1"]
    assert legend["class_names"] == CLASS_NAMES and legend["colormap"] == "camvid"
    np.testing.assert_array_equal(legend["colors"], viz.get_colormap("camvid"))
    for path, media_type in (("/", "text/html"), ("/page/page.js", "text/javascript"), ("/page/page.css", "text/css")):
        reply = httpx.get(f"{server}{path}", timeout=10)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(media_type)
        assert "default-src 'self'" in reply.headers["content-security-policy"]
    assert httpx.post(f"{server}/page/models.json", timeout=10).status_code == 404


def test_version_legend_defaults_and_notes():
    assert version_legend({}) == {"num_classes": None, "class_names": None, "colormap": "pascal",
                                  "colors": voc_colormap().tolist()}
    legend = version_legend({"num_classes": 3, "class_names": ["sky"], "colormap": "mars"})
    assert legend["class_names"] == ["class 0", "class 1", "class 2"] and legend["colormap"] == "pascal"
    assert "class_names ignored" in legend["note"] and "unknown colormap 'mars'" in legend["note"]
    assert version_legend({"num_classes": 2, "class_names": ["a", "b"], "colormap": "cityscapes"})["colors"][:2] == \
        [[128, 64, 128], [244, 35, 232]]


def test_web_page_false_turns_the_page_off(base_dir, monkeypatch):
    """`deeplab serve --web_page=false` builds an app whose `/` and page routes are 404 (uvicorn.run replaced, the
    app asked in process)."""
    import uvicorn

    from keras_deeplab.serving import server

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: apps.append(app))
    for flag in ("--web_page=false", "--web-page=true"):
        server.main(["--model_name", MODEL, "--model_base_path", str(base_dir), flag])

    async def get(app, paths):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(path) for path in paths]

    paths = ("/", "/page/models.json", "/page/page.js")
    off, on = (asyncio.run(get(app, paths)) for app in apps)
    assert [reply.status_code for reply in off] == [404, 404, 404]
    assert all(reply.json()["error"].startswith("Not found: GET /") for reply in off)
    assert [reply.status_code for reply in on] == [200, 200, 200]


def test_web_page_flag_spellings():
    from keras_deeplab.serving.server import parse_args

    for argv, expected in (([], True), (["--web_page=false"], False), (["--web-page=false"], False),
                           (["--web-page", "0"], False), (["--web_page"], True), (["--web-page=true"], True)):
        assert parse_args(["--model_base_path=m", *argv]).web_page is expected, argv
