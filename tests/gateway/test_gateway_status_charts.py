"""The status page's charts in headless Chromium: four fake nodes on ptys (water, signal, toll,
rain) feed the real daemon; each chart has one point per record (or per minute / interval)
and its threshold lines; the water thresholds come from the node's config.get reply relayed by
the gateway. A screenshot of the page is saved in the test's tmp dir (path printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request

from roadside.gateway import protocol as p
from roadside.tools.sim import procs
from roadside.tools.sim.gateway_toml import GatewaySettings, write
from support import system
from test_gateway_status_page import CHROMEDRIVER, CHROMIUM, chromium, status

pytestmark = system.needs(
    CHROMIUM and CHROMEDRIVER,
    "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")

LEVELS = 30
PHASES = 12
RAIN = 6
TOLL = {0: 5, 1: 0, 2: 3}     # minute -> transactions: 3 bars, one of them empty


def _hello(node, node_id: str, role: str) -> None:
    node.send({0: p.HELLO, 1: node_id, 2: role, 3: "test", 4: "sim", 5: 1, 6: "power_on",
               7: 1, 8: 1, 9: 1})


def _records(node, recs: list[list]) -> None:
    """RECORDS of at most 10 records each (a frame holds 1 KiB)."""
    for i in range(0, len(recs), 10):
        node.send({0: p.RECORDS, 1: recs[i][0], 2: recs[i:i + 10]})


def _command(base: str, token: str, node: str, name: str) -> dict:
    req = urllib.request.Request(
        f"{base}nodes/{node}/commands", method="POST",
        data=json.dumps({"name": name, "who": "test"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_status_page_charts_per_role(tmp_path, fake_nodes):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    water, signal, toll, rain = nodes = fake_nodes(4)
    cfg = write(tmp_path / "gw.toml", [n.path for n in nodes], tmp_path / "data", None,
                "127.0.0.1:0", GatewaySettings(gateway_id="gw-charts", site="river-7"))
    proc, url = procs.start_gateway(cfg, tmp_path / "gw.log")
    base = url.removesuffix("status")
    driver = None
    try:
        now = int(time.time())
        minute = now // 60 * 60

        async def feed() -> None:
            for _ in range(200):
                if all(link["state"] == "open" for link in status(url)["links"]):
                    break
                await asyncio.sleep(0.05)
            for node, (node_id, role) in zip(nodes, [("wl-0001", "water"),
                                                     ("sg-0001", "signal"),
                                                     ("tb-0001", "toll"),
                                                     ("rg-0001", "rain")], strict=True):
                _hello(node, node_id, role)
                await node.expect(p.Ack, seq=0)
            # water: a level every 10 s rising 10 -> 39 cm, then the alert (its ALARM)
            _records(water, [[i + 1, now - 10 * (LEVELS - i), p.KIND_LEVEL, 0,
                              {1: 10.0 + i, 2: 6.0, 3: 2000 - i}] for i in range(LEVELS)])
            _records(water, [[LEVELS + 1, now, p.KIND_ALARM, p.FLAG_PRIORITY,
                              {1: "alert", 2: 39.0, 3: "normal"}]])
            # signal: phases 1..4 green -> amber -> red in turn, then a conflict fault
            recs, at = [], 10_000
            for i in range(PHASES):
                phase, state = i // 3 + 1, ("green", "amber", "red")[i % 3]
                recs.append([i + 1, now - 60 + i, p.KIND_PHASE, 0,
                             {1: phase, 2: state, 3: "red", 4: 0, 5: at}])
                at += (12_000, 3_500, 1_500)[i % 3]
            recs.append([PHASES + 1, now, p.KIND_FAULT, p.FLAG_PRIORITY,
                         {1: "conflict", 2: 3, 3: 2, 4: 0, 5: 0, 6: at + 200, 7: 110}])
            _records(signal, recs)
            # toll: transactions in three consecutive minutes (the middle one quiet)
            seq, recs = 0, []
            for m, n in TOLL.items():
                for k in range(n):
                    seq += 1
                    recs.append([seq, minute - 120 + 60 * m + k, p.KIND_TRANSACTION,
                                 p.FLAG_PRIORITY, {1: f"e2{seq:04x}", 2: 1, 3: 0, 4: 500,
                                                   5: 9, 6: -50, 7: 1, 8: seq}])
            _records(toll, recs)
            # rain: six one-minute intervals, 120 mm/h in the fourth raising the alarm
            rates = [6.0, 12.0, 36.0, 120.0, 48.0, 12.0]
            recs = [[i + 1, now - 60 * (RAIN - 1 - i), p.KIND_RAINFALL, 0,
                     {1: int(r / 12), 2: r / 60, 3: 60, 4: r, 5: 0}]
                    for i, r in enumerate(rates)]
            recs.append([RAIN + 1, now - 120, p.KIND_INTENSITY, p.FLAG_PRIORITY,
                         {1: "heavy", 2: 120.0, 3: "normal"}])
            _records(rain, recs)
            for node, last in ((water, LEVELS + 1), (signal, PHASES + 1), (toll, seq),
                               (rain, RAIN + 1)):
                await node.expect(p.Ack, seq=last)
            # The water node's own thresholds, from its reply to config.get.
            token = (tmp_path / "data" / "api.token").read_text().strip()
            asked = asyncio.create_task(asyncio.to_thread(_command, base, token, "wl-0001",
                                                          "config.get"))
            cmd = await water.expect(p.Command, timeout=10)
            water.send({0: p.REPLY, 1: cmd.request_id, 2: True, 3: {
                "thresholds": {"alert_cm": 35.0, "alarm_cm": 45.0, "critical_cm": 60.0,
                               "hysteresis_cm": 2.0}, "report_interval_s": 60}})
            assert (await asked)["ok"] is True

        asyncio.run(asyncio.wait_for(feed(), 30))

        with urllib.request.urlopen(base + "history", timeout=5) as resp:
            hist = {n["id"]: n for n in json.loads(resp.read())["nodes"]}
        assert len(hist["wl-0001"]["levels"]) == LEVELS
        assert hist["wl-0001"]["thresholds_from"].startswith("node config (config.get")
        assert [m[1] for m in hist["tb-0001"]["per_minute"]] == list(TOLL.values())

        driver = chromium(tmp_path / "chromium-profile")
        driver.set_page_load_timeout(15)
        driver.set_window_size(1200, 1400)
        driver.get(base)
        wait = WebDriverWait(driver, 15, poll_frequency=0.1,
                             ignored_exceptions=[NoSuchElementException,
                                                 StaleElementReferenceException])

        def chart(node: str, kind: str) -> dict:
            """What Chromium drew: points, polyline vertices, bars, threshold lines."""
            return wait.until(lambda d: d.execute_script("""
                const s = document.querySelector(
                    `svg.chart[data-node="${arguments[0]}"][data-chart="${arguments[1]}"]`);
                if (!s) return null;
                const line = s.querySelector("polyline.series");
                return {points: Number(s.dataset.points),
                        vertices: line ? line.getAttribute("points").trim().split(/\\s+/).length
                                       : 0,
                        bars: s.querySelectorAll("rect.bar").length,
                        segments: s.querySelectorAll("rect.seg").length,
                        faults: s.querySelectorAll(".fault").length,
                        events: s.querySelectorAll(".event").length,
                        thresholds: Array.from(s.querySelectorAll("line.threshold")).map(
                            l => [l.dataset.threshold, Number(l.dataset.value)]),
                        width: s.getBoundingClientRect().width,
                        text: s.closest(".card").innerText};
            """, node, kind))

        level = chart("wl-0001", "level")
        assert level["points"] == level["vertices"] == LEVELS
        assert level["thresholds"] == [["alert", 35], ["alarm", 45], ["critical", 60]]
        assert level["events"] == 1                               # the alert, on the line
        assert "latest 39.0 cm" in level["text"] and "node config" in level["text"]
        assert "alert 35 cm" in level["text"] and "40" in level["text"]   # a y tick

        phases = chart("sg-0001", "phases")
        assert phases["points"] == phases["segments"] == PHASES
        assert phases["faults"] == 1 and "conflict phase 3" in phases["text"]

        tx = chart("tb-0001", "transactions")
        assert tx["points"] == tx["bars"] == len(TOLL)
        assert "8 transactions in 3 min" in tx["text"]

        rainfall = chart("rg-0001", "rainfall")
        assert rainfall["points"] == rainfall["bars"] == RAIN
        assert rainfall["thresholds"] == [["heavy", 50], ["clear", 40]]   # firmware defaults
        assert rainfall["events"] == 1 and "firmware defaults" in rainfall["text"]
        assert "3.9 mm in 6 intervals" in rainfall["text"]

        # Units across the page: the queue's byte budget in MiB, not a bare byte count.
        budget = wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, '#queue div[data-key="max_bytes"] b').text)
        assert budget.endswith("MiB"), budget

        shot = tmp_path / "status_charts.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        if os.environ.get("ROADSIDE_SCREENSHOT"):
            shutil.copy(shot, os.environ["ROADSIDE_SCREENSHOT"])

        # On a phone: one chart per row, each as wide as the screen, nothing cut off.
        driver.set_window_size(390, 844)
        driver.execute_script("window.dispatchEvent(new Event('resize'))")
        wait.until(lambda d: 250 < chart("wl-0001", "level")["width"] <= 390)
        phone = tmp_path / "status_charts_phone.png"
        driver.save_screenshot(str(phone))
        print(f"screenshot: {phone}")
    finally:
        if driver is not None:
            driver.quit()
        procs.stop(proc)
