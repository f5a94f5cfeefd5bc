"""The status page (GET /) in headless Chromium, against the real daemon and a fake node on a pty.

Needs Debian's `chromium` and `chromium-driver` (selenium drives /usr/bin/chromedriver; nothing
is downloaded). A screenshot of the rendered page is left in the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import urllib.request

from roadside.gateway import protocol as p
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, write
from support import system
from support.gateway_status import link_open, status

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = system.needs(
    CHROMIUM and CHROMEDRIVER,
    "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")


def chromium(user_data_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={user_data_dir}"):
        opts.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=opts, service=service)


def test_status_page_shows_node_level_and_alarm(tmp_path, fake_node):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cfg = write(tmp_path / "gw.toml", [fake_node.path], tmp_path / "data", None,
                "127.0.0.1:0", GatewaySettings(gateway_id="gw-page", site="river-7"))
    proc, url = procs.start_gateway(cfg, tmp_path / "gw.log")
    driver = None
    try:
        async def feed():
            await link_open(url, fake_node.path)     # pyserial flushes the input on open
            fake_node.hello("wl-0042")
            await fake_node.expect(p.Ack, seq=0)
            fake_node.records([1, 2, 3])                       # levels 11, 12, 13 cm
            await fake_node.expect(p.Ack, seq=3)
            fake_node.send({0: p.RECORDS, 1: 4, 2: [
                [4, 1_795_420_800, p.KIND_ALARM, p.FLAG_PRIORITY,
                 {1: "critical", 2: 13.0, 3: "alarm"}]]})
            await fake_node.expect(p.Ack, seq=4)

        asyncio.run(asyncio.wait_for(feed(), 20))
        st = status(url)
        assert st["recent_alarms"][0]["node"] == "wl-0042"
        assert st["recent_alarms"][0]["state"] == "critical"

        base = url.removesuffix("status")
        with urllib.request.urlopen(base, timeout=5) as resp:
            html = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/html")
        # Self-contained: no external scripts, styles or fonts.
        assert "http://" not in html and "https://" not in html and " src=" not in html

        driver = chromium(tmp_path / "chromium-profile")
        driver.set_page_load_timeout(15)
        driver.get(base)
        # The page re-renders its tables on every poll of /status, so an element found a
        # moment ago may be gone: read each text inside the wait, which retries when stale.
        wait = WebDriverWait(driver, 15, poll_frequency=0.1,
                             ignored_exceptions=[NoSuchElementException,
                                                 StaleElementReferenceException])

        def text(by: str, selector: str) -> str:
            return wait.until(lambda d: d.find_element(by, selector).text)

        assert text(By.CSS_SELECTOR, 'tr[data-node="wl-0042"] td[data-col="level"]') == "13.0 cm"
        row = text(By.CSS_SELECTOR, '#nodes tr[data-node="wl-0042"]')
        assert "water" in row and "up" in row and "critical" in row
        alarm = text(By.CSS_SELECTOR, '#alarms tr[data-node="wl-0042"]')
        assert "critical" in alarm and "13.0" in alarm
        assert "open" in text(By.CSS_SELECTOR, "#links tbody tr")
        assert text(By.ID, "gw") == "gw-page"
        assert "no [[uplink]] configured" in text(By.ID, "uplinks")
        wait.until(lambda d: d.find_element(By.ID, "conn").text.startswith("live"))

        # The page follows /status: a new level shows up within a couple of polls.
        async def more():
            fake_node.records([5])
            await fake_node.expect(p.Ack, seq=5)

        asyncio.run(asyncio.wait_for(more(), 10))
        wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, 'tr[data-node="wl-0042"] td[data-col="level"]').text == "15.0 cm")
        shot = tmp_path / "status_page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("ROADSIDE_SCREENSHOT"):
            shutil.copy(shot, os.environ["ROADSIDE_SCREENSHOT"])

        # The gateway stops: the page says so instead of showing stale numbers as live.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        wait.until(lambda d: "not answering" in d.find_element(By.ID, "conn").text)
    finally:
        if driver is not None:
            driver.quit()
        procs.stop(proc)


def test_status_page_shows_ota_progress_and_outcome(tmp_path):
    """An update rolled out (one node done, one refused) shows on the page node by node."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from support.ota_node import OtaNode, api, make_bundle

    a, b = OtaNode("wl-0001"), OtaNode("wl-0002", version="3.0.0")
    cfg = write(tmp_path / "gw.toml", [a.path, b.path], tmp_path / "data", None, "127.0.0.1:0",
                GatewaySettings(gateway_id="gw-page", site="river-7"))
    proc, url = procs.start_gateway(cfg, tmp_path / "gw.log")
    base = url.removesuffix("/status")
    driver = None
    try:
        async def roll() -> None:
            for n in (a, b):
                await n.join(url)
            code, doc = await asyncio.to_thread(
                api, base, tmp_path / "data", "/ota/rollouts",
                make_bundle({"main.py": b"z" * 3000}, "1.1.0"),
                {"node": ["wl-0001", "wl-0002"]})
            assert code == 202, doc
            await a.until(lambda: a.state == "done", "wl-0001 updated")
            for _ in range(500):
                if status(url)["ota"]["rollouts"][0]["state"] != "running":
                    break
                await asyncio.sleep(0.02)

        asyncio.run(asyncio.wait_for(roll(), 30))
        driver = chromium(tmp_path / "chromium-profile")
        driver.set_page_load_timeout(15)
        driver.get(base + "/")
        wait = WebDriverWait(driver, 15, poll_frequency=0.1,
                             ignored_exceptions=[NoSuchElementException,
                                                 StaleElementReferenceException])
        done = wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, '#ota tr[data-node="wl-0001"]').text)
        assert "done" in done and "100 %" in done and "app 1.1.0" in done
        refused = wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, '#ota tr[data-node="wl-0002"]').text)
        assert "failed" in refused and "refused: version" in refused
    finally:
        if driver is not None:
            driver.quit()
        procs.stop(proc)
        a.close()
        b.close()
