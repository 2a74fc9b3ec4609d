"""omni-heads explore: the map's data and thumbnails, and the page driven in a real headless Chromium (Debian's
chromium and chromium-driver, which .ci/run installs; the browser tests skip, saying why, where they are absent)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_extract import make_images, tiny_config

from omniart.extract import run_extract
from omniart.pipeline.cli import main
from omniart.pipeline.maps import layout

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ROWS = 60


def test_layout_is_deterministic_for_a_seed_and_neighbours_are_nearest():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    x = np.repeat(centres, 20, axis=0) + 0.05 * rng.normal(size=(60, 32))
    for method in ("pca", "pca-tsne", "umap"):
        position, neighbors = layout(x, method, seed=3, neighbors=5)
        again, _ = layout(x, method, seed=3, neighbors=5)
        np.testing.assert_array_equal(position, again)
        assert position.shape == (60, 2) and 0 <= position.min() and position.max() <= 1
        assert neighbors.shape == (60, 5) and (neighbors != np.arange(60)[:, None]).all()
        assert (neighbors // 20 == np.arange(60)[:, None] // 20).mean() > 0.95  # a cluster's neighbours are in it
        spread = [np.linalg.norm(position[group * 20:(group + 1) * 20].std(0)) for group in range(3)]
        centre = np.array([position[group * 20:(group + 1) * 20].mean(0) for group in range(3)])
        assert max(spread) < 0.5 * np.linalg.norm(centre[0] - centre[1]), method  # three separate islands


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site of 60 images in three makers (a cache extracted from a folder, a CSV and an audit.csv)."""
    tmp_path = tmp_path_factory.mktemp("explore")
    names = [f"{index:02d}.jpg" for index in range(ROWS)]
    images = make_images(tmp_path / "images", names)
    shutil.copy(images / names[0], images / names[-1])  # one image catalogued twice: a duplicate group
    run_extract(tiny_config(images, tmp_path / "cache"))
    pd.DataFrame({"key": names, "artist": [f"maker {i % 3}" for i in range(ROWS)],
                  "year": [1600 + 10 * (i % 7) for i in range(ROWS)]}).to_csv(tmp_path / "meta.csv", index=False)
    (tmp_path / "audit").mkdir()
    pd.DataFrame({"key": names[:3], "task": "artist", "recorded": "maker 0", "predicted": "maker 1",
                  "probability_of_recorded": 0.01, "score": [4.6, 3.0, 2.0], "label": "", "outside_interval": "",
                  "fold": 0}).to_csv(tmp_path / "audit" / "audit.csv", index=False)
    out = tmp_path / "site"
    result = CliRunner().invoke(main, ["explore", str(tmp_path / "cache"), "--out", str(out), "--metadata",
                                       str(tmp_path / "meta.csv"), "--format", "csv", "--audit", str(tmp_path / "audit"),
                                       "--method", "pca", "--workers", "0", "--quiet",
                                       "--duplicate-threshold", "0.99999"])  # the tiny random backbone's images are alike
    assert result.exit_code == 0, result.output
    return out, names


def _data(out: Path) -> dict:
    text = (out / "data.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))


def test_the_site_holds_every_point_its_fields_thumbnails_and_the_audit_queue(site):
    out, names = site
    data = _data(out)
    assert data["count"] == ROWS and sorted(data["keys"]) == names and len(data["x"]) == ROWS
    artist = data["fields"]["artist"]
    assert sorted(artist["names"]) == ["maker 0", "maker 1", "maker 2"]
    assert [artist["names"][code] for code in artist["codes"][:3]] == [f"maker {int(k[:2]) % 3}" for k in data["keys"][:3]]
    assert data["fields"]["audit score"]["values"][data["keys"].index(names[0])] == 4.6
    assert [row["key"] for row in data["audit"]] == names[:3]
    assert [sorted(data["keys"][i] for i in group) for group in data["duplicates"]] == [[names[0], names[-1]]]
    assert data["atlas"]["files"] == ["atlas-000.jpg"] and data["atlas"]["missing"] == 0
    from PIL import Image

    with Image.open(out / "atlas-000.jpg") as atlas:
        assert atlas.width == 2048 and np.asarray(atlas)[:64, :64].std() > 5  # a real thumbnail, not the grey
    assert json.loads((out / "config.json").read_text())["points"] == ROWS


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,800", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _open(browser, out):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((out / "index.html").as_uri())
    WebDriverWait(browser, 20).until(lambda driver: driver.execute_script("return !!window.omniart"))


def _css_point(browser, index):
    """Point `index`'s position on the map canvas in CSS pixels from the canvas's top-left corner."""
    x, y = browser.execute_script(f"return window.omniart.screenOf({index})")
    scale = browser.execute_script("return window.omniart.canvasScale()")
    return x / scale, y / scale


def _at(browser, canvas, x, y):
    from selenium.webdriver.common.action_chains import ActionChains

    size = canvas.size  # selenium 4 offsets are from the element's centre
    return ActionChains(browser).move_to_element_with_offset(canvas, x - size["width"] / 2, y - size["height"] / 2)


def test_the_page_draws_every_point_and_a_click_shows_the_record(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    out, names = site
    _open(browser, out)
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
    assert browser.execute_script("return window.omniart.count") == ROWS
    assert browser.execute_script("return window.omniart.drawn()") == ROWS
    keys = _data(out)["keys"]
    points = np.array([_css_point(browser, i) for i in range(ROWS)])
    distance = np.linalg.norm(points[:, None] - points[None], axis=2) + np.eye(ROWS) * 1e9
    lone = int(np.argmax(distance.min(1)))  # the point furthest from any other: a click hits it alone
    canvas = browser.find_element(By.ID, "map")
    _at(browser, canvas, *points[lone]).click().perform()
    assert browser.find_element(By.ID, "selected-key").text == keys[lone]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#details canvas")) == 1 + 8  # its image and 8 neighbours
    assert browser.save_screenshot(str(tmp_path / "explore.png")) and (tmp_path / "explore.png").stat().st_size > 1000


def test_a_colour_change_recolours_and_a_lasso_exports_the_selected_keys(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    out, _ = site
    _open(browser, out)
    keys = _data(out)["keys"]
    pixel = "var p = window.omniart.screenOf(%d); return Array.from(document.getElementById('map').getContext('2d')" \
            ".getImageData(Math.round(p[0]), Math.round(p[1]), 1, 1).data)"
    before = [browser.execute_script(pixel % i) for i in range(ROWS)]
    Select(browser.find_element(By.ID, "colour")).select_by_visible_text("year")
    assert browser.execute_script("return window.omniart.state.colour") == "year"
    after = [browser.execute_script(pixel % i) for i in range(ROWS)]
    assert sum(a != b for a, b in zip(before, after)) > ROWS // 2
    points = np.array([_css_point(browser, i) for i in range(ROWS)])
    low, high = np.percentile(points, 20, axis=0), np.percentile(points, 80, axis=0)
    corners = [(low[0], low[1]), (high[0], low[1]), (high[0], high[1]), (low[0], high[1])]
    canvas = browser.find_element(By.ID, "map")
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(browser).key_down(Keys.SHIFT)
    chain = chain.move_to_element_with_offset(canvas, corners[0][0] - canvas.size["width"] / 2,
                                              corners[0][1] - canvas.size["height"] / 2).click_and_hold()
    for x, y in corners[1:]:
        chain = chain.move_to_element_with_offset(canvas, x - canvas.size["width"] / 2, y - canvas.size["height"] / 2)
    chain.release().key_up(Keys.SHIFT).perform()
    selected = set(browser.find_element(By.ID, "selection-keys").get_attribute("value").split())
    surely_in = {keys[i] for i, (x, y) in enumerate(points) if low[0] + 2 < x < high[0] - 2 and low[1] + 2 < y < high[1] - 2}
    maybe_in = {keys[i] for i, (x, y) in enumerate(points) if low[0] - 2 < x < high[0] + 2 and low[1] - 2 < y < high[1] + 2}
    assert surely_in and surely_in <= selected <= maybe_in
    assert browser.execute_script("return window.omniart.selectionCsv()").count("\n") == len(selected) + 1
    assert not browser.find_element(By.ID, "export").get_attribute("disabled")
    browser.find_element(By.ID, "search").send_keys("maker 1")  # a class name finds its records
    assert browser.execute_script("return window.omniart.state.highlight.size") == 20
