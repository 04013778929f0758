"""The night report in a real browser: headless Chromium driven by Selenium.

A generated night with one frame excluded by the configuration is reduced; its
``results/report/index.html`` and the ``snakemake --report`` file are opened from disk
and checked: no console error, no request leaving the machine, one table row per light
with the excluded frame marked and its reason, every image decoded, the lineage naming the
masters. A screenshot is saved as an artefact (its path is printed).

Chromium comes from Debian (``chromium``, ``chromium-driver``; ``.ci/run`` installs them)
and nothing may download a browser: the driver path is given to Selenium, so Selenium
Manager never runs. Without Chromium or Selenium the test fails and says why.
"""

import json
import os
from pathlib import Path

import pytest
import yaml
from astropy.io import fits

from ccdflow import demo
from conftest import read_tsv, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,4200",
)
EXCLUDED = "light_M13demo_V_060s_002"


def _driver(profile):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"the browser test needs {' and '.join(missing)}: "
            "apt-get install -y chromium chromium-driver (.ci/run does)"
        )
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("the browser test needs Selenium: pip install -r envs/requirements-dev.txt")
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must not fetch
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(
        executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log")
    )
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    truth = demo.make_night(base / "night", preset="test", seed=5)
    cfg = base / "exclude.yaml"
    cfg.write_text(yaml.safe_dump({"selection": {"exclude": [EXCLUDED]}}))
    work = base / "work"
    work.mkdir()
    config = {"raw_dir": truth["raw_dir"]}
    snakemake(work, config=config, configfiles=[cfg])
    snakemake(
        work, "--report", str(base / "snakemake_report.html"), config=config, configfiles=[cfg]
    )
    return base, work


@pytest.fixture(scope="module")
def browser(reduced):
    driver = _driver(reduced[0] / "chromium-profile")
    yield driver
    driver.quit()


def _load(driver, path):
    """Open ``path`` from disk; return (console entries, URLs of every request made)."""
    driver.get("about:blank")  # let the start page finish, then drop its logs
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(path.as_uri())
    driver.execute_script("return document.readyState")
    console = driver.get_log("browser")
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    urls |= set(
        driver.execute_script(
            "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
        )
    )
    return console, urls


def _network(urls):
    """The URLs that would leave the machine (the browser's own chrome:// pages do not)."""
    return sorted(u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp"))


def test_night_report_in_the_browser(reduced, browser):
    from selenium.webdriver.common.by import By

    base, work = reduced
    page = work / "results/report/index.html"
    console, urls = _load(browser, page)
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []
    assert _network(urls) == [], "the page made requests that leave the machine"
    page_urls = [u for u in urls if not u.startswith("chrome")]
    assert page_urls and all(u.startswith(("file://", "data:")) for u in page_urls), page_urls
    assert page.stat().st_size < 5e6

    lights = [f["frame"] for f in read_tsv(work / "results/index/frames.tsv")]
    lights = [f for f in lights if f.startswith("light_")]
    rows = browser.find_elements(By.CSS_SELECTOR, "#frame-table tbody tr")
    assert sorted(r.get_attribute("data-frame") for r in rows) == sorted(lights)
    excluded = browser.find_elements(By.CSS_SELECTOR, "#frame-table tbody tr.excluded")
    assert [r.get_attribute("data-frame") for r in excluded] == [EXCLUDED]
    reason = excluded[0].find_element(By.CSS_SELECTOR, "td.col-reason").text
    assert "excluded_by_config" in reason
    colour = excluded[0].find_element(By.TAG_NAME, "td").value_of_css_property("background-color")
    assert colour != "rgba(0, 0, 0, 0)", "the excluded row is not marked"

    images = browser.execute_script(
        "return Array.from(document.images).map(function (i) {"
        " return [i.alt, i.complete, i.naturalWidth]; })"
    )
    # the masters of the plan (the bad-pixel maps bpm_{setup} are not shown)
    masters = sorted(
        p.name for p in (work / "results/masters").glob("*.fits") if not p.name.startswith("bpm_")
    )
    groups = {f["group"] for f in read_tsv(work / "results/qc/frames.tsv")}
    # every master and the profiles of each bias; per group: the stack beside its raw
    # stack, a frame with its cosmic-ray mask, the quality plot, the lineage graph
    n_bias = sum(m.startswith("bias") for m in masters)
    assert len(images) == len(masters) + n_bias + 4 * len(groups)
    assert [i for i in images if not (i[1] and i[2] > 0)] == []

    lineage = browser.find_element(By.CSS_SELECTOR, "table.lineage[data-group='M13demo_V_60']")
    text = lineage.text
    assert EXCLUDED in text and "excluded: excluded_by_config" in text
    detector = browser.find_element(By.ID, "detector-table").text
    assert "electron/adu" in detector and "header" in detector
    for kind in ("bias", "dark", "flat_1x1_128x96_V"):
        assert any(m.startswith(kind) and Path(m).stem in text for m in masters), kind
    # each master's caption counts the defect pixels it flags (the test camera's hot
    # pixels in the dark), as its header does
    captions = {
        c.text.split(":")[0]: c.text
        for c in browser.find_elements(By.CSS_SELECTOR, "#masters ~ figure figcaption")
    }
    dark = next(m for m in masters if m.startswith("dark"))
    with fits.open(work / "results/masters" / dark) as hdul:
        n_hot = hdul[0].header["NHOT"]
    assert n_hot > 0
    assert f"{n_hot} hot pixels" in captions[dark], captions

    # the table sorts when a heading is clicked (twice: descending)
    heading = browser.find_element(By.CSS_SELECTOR, "#frame-table th[data-key='frame']")
    heading.click()
    heading.click()
    order = [
        r.get_attribute("data-frame")
        for r in browser.find_elements(By.CSS_SELECTOR, "#frame-table tbody tr")
    ]
    assert order == sorted(lights, reverse=True)

    shot = base / "night_report.png"
    browser.get(page.as_uri())
    assert browser.save_screenshot(str(shot))
    print(f"night report screenshot: {shot}")


def test_snakemake_report_loads_in_the_browser(reduced, browser):
    base, _ = reduced
    page = base / "snakemake_report.html"
    console, urls = _load(browser, page)
    assert [e for e in console if e["level"] == "SEVERE"] == []
    assert _network(urls) == [], "the Snakemake report made requests that leave the machine"
    body = browser.execute_script("return document.body.innerText")
    assert "Night report" in body or "index.html" in body
    shot = base / "snakemake_report.png"
    assert browser.save_screenshot(str(shot))
    print(f"snakemake --report screenshot: {shot}")
