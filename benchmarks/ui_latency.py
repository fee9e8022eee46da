"""The live page under the demo's load: from a shopper's action to the new list on screen.

    .venv/bin/python benchmarks/ui_latency.py [--events 1500] [--rate 30] [--actions 20] \
        [--experiments experiments.example.yaml] [--ranker fusion|two-tower] \
        [--screenshot docs/ui.png]

1. starts ``streamrec demo --ui`` (embedded broker, dataflow, worker, the page), which
   replays ``--events`` events at ``--rate`` events/s (the demo's defaults);
2. opens the page in Debian's headless Chromium (selenium through
   /usr/bin/chromedriver: nothing is downloaded), starts a new shopper, clicks a
   catalog item, then, while the replay runs, clicks, carts or buys an item of the
   shopper's current list ``--actions`` times;
3. each action's round trip is measured in the page (``window.streamrecUi``): from
   the click to the frame that shows the list the event triggered, beside the
   pipeline's own event -> list latency (the list's ``latency_ms``);
4. prints p50 / p95 / max of both, the events/s the page showed meanwhile and
   the load average, saves a screenshot, and stops the demo with Ctrl-C.

``tests/integration/test_ui.py`` drives the page with the same :class:`PageDriver`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_missing() -> str | None:
    """Why headless Chromium cannot run here (None when it can)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return (
            f"Debian's chromium and chromium-driver are not installed ({', '.join(missing)} "
            "missing): `make chromium` installs them"
        )
    return None


def headless_chromium(width: int = 1400, height: int = 1000):  # noqa: ANN201 - selenium's type
    """Debian's Chromium, headless, through Debian's chromedriver (no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@dataclass(frozen=True)
class RoundTrip:
    """One action: the event the page produced, the list it triggered, and times."""

    event_id: str
    rec_id: str
    ms: float  # click -> the list on screen, in the page
    latency_ms: float  # the pipeline's event -> list (the list's own figure)
    events_per_s: float  # what the page's tile showed at the time


class PageDriver:
    """The live page as a shopper uses it, with selenium."""

    def __init__(self, driver, url: str) -> None:  # noqa: ANN001
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url
        self._wait = lambda timeout: WebDriverWait(driver, timeout, poll_frequency=0.02)

    def open(self, user: str, timeout_s: float = 30.0) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(self.url)
        self._wait(timeout_s).until(lambda d: d.find_element(By.ID, "conn").text == "live")
        box = self.driver.find_element(By.ID, "user")
        box.clear()
        box.send_keys(user)
        self.driver.find_element(By.ID, "open-user").click()
        self._wait(timeout_s).until(
            lambda d: (
                user in d.find_element(By.ID, "user-line").text
                and d.find_element(By.ID, "conn").text == "live"
            )
        )

    def search(self, query: str, timeout_s: float = 10.0) -> list[str]:
        """Type into the catalog search; the item ids found."""
        from selenium.webdriver.common.by import By

        box = self.driver.find_element(By.ID, "search")
        box.clear()
        box.send_keys(query)
        self._wait(timeout_s).until(
            lambda d: d.find_element(By.ID, "results").get_attribute("data-query") == query
        )
        rows = "#results tbody tr"
        return [
            r.get_attribute("data-item") for r in self.driver.find_elements(By.CSS_SELECTOR, rows)
        ]

    def act(self, table: str, row: int, action: str, timeout_s: float) -> RoundTrip:
        """Press ``action`` (click, add_to_cart, purchase) on row ``row`` (1-based) of
        ``table`` (``list`` or ``results``) and wait for the list it triggers."""
        from selenium.webdriver.common.by import By

        before = self.driver.execute_script("return window.streamrecUi.roundTrips.length")
        button = f"#{table} tbody tr:nth-child({row}) button[data-type='{action}']"
        self.driver.find_element(By.CSS_SELECTOR, button).click()
        self._wait(timeout_s).until(
            lambda d: d.execute_script("return window.streamrecUi.roundTrips.length") > before
        )
        trip = self.driver.execute_script("return window.streamrecUi.roundTrips.at(-1)")
        shown = self.driver.find_element(By.CSS_SELECTOR, "#list").get_attribute("data-trigger")
        assert shown == trip["event_id"], (shown, trip)
        eps = self.driver.find_element(By.ID, "t-events").text
        return RoundTrip(
            event_id=trip["event_id"],
            rec_id=trip["rec_id"],
            ms=float(trip["ms"]),
            latency_ms=float(trip["latency_ms"]),
            events_per_s=float(eps) if re.fullmatch(r"[\d.]+", eps) else 0.0,
        )


def summary(trips: list[RoundTrip]) -> dict[str, float]:
    """p50 / p95 / max of the page's round trip and of the pipeline's latency (ms)."""
    import numpy as np

    page = np.array([t.ms for t in trips])
    pipe = np.array([t.latency_ms for t in trips])
    return {
        "actions": len(trips),
        "page_p50_ms": float(np.percentile(page, 50)),
        "page_p95_ms": float(np.percentile(page, 95)),
        "page_max_ms": float(page.max()),
        "pipeline_p50_ms": float(np.percentile(pipe, 50)),
        "pipeline_p95_ms": float(np.percentile(pipe, 95)),
        "pipeline_max_ms": float(pipe.max()),
        "events_per_s_min": min(t.events_per_s for t in trips),
        "load_average": os.getloadavg()[0],
    }


def _start_demo(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, list[str]]:
    cmd = [sys.executable, "-m", "streamrec", "demo", "--ui", "--port", "0"]
    cmd += ["--events", str(args.events), "--rate", str(args.rate), "--ranker", args.ranker]
    if args.experiments:
        cmd += ["--experiments", str(args.experiments)]
    env = {**os.environ, "COLUMNS": "200"}
    demo = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line.rstrip())
            if "live page" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + args.start_timeout_s
    while not found.wait(0.5):
        if demo.poll() is not None or time.monotonic() > deadline:
            demo.kill()
            raise SystemExit("the demo did not serve its page:\n" + "\n".join(lines[-30:]))
    url = next(m.group(0) for ln in lines if (m := re.search(r"http://[\d.]+:\d+/", ln)))
    return demo, url, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--actions", type=int, default=20)
    parser.add_argument("--ranker", default="fusion", choices=["fusion", "two-tower"])
    parser.add_argument("--experiments", type=Path, default=ROOT / "experiments.example.yaml")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    args = parser.parse_args()
    if (reason := chromium_missing()) is not None:
        raise SystemExit(reason)
    demo, url, lines = _start_demo(args)
    driver = headless_chromium(1400, 1150)
    try:
        page = PageDriver(driver, url)
        page.open(f"shopper-bench-{os.getpid()}")
        page.search("")
        page.act("results", 1, "click", timeout_s=30)  # a cold shopper's first list
        actions = ("click", "add_to_cart", "purchase")
        trips = []
        for i in range(args.actions):
            time.sleep(1.0)
            trips.append(page.act("list", 1 + i % 3, actions[i % 3], timeout_s=30))
        time.sleep(3.0)  # the tiles and the A/B report catch up
        if args.screenshot is not None:  # the whole page, not only the first screen
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1400, height + 140)
            time.sleep(1.5)
            driver.save_screenshot(str(args.screenshot))
        print(json.dumps({"url": url, **summary(trips)}, indent=2))
        for t in trips:
            print(
                f"{t.event_id}: page {t.ms:7.1f} ms, pipeline {t.latency_ms:7.1f} ms, "
                f"{t.events_per_s:5.1f} events/s shown"
            )
        # The demo's own report (its event -> list percentiles over the whole replay),
        # then the page keeps being served until Ctrl-C.
        deadline = time.monotonic() + 300
        while not any("Ctrl-C to stop" in ln for ln in lines) and time.monotonic() < deadline:
            time.sleep(0.5)
        print("\n".join(ln for ln in lines if "latency p50" in ln or "events in" in ln))
    finally:
        driver.quit()
        demo.send_signal(signal.SIGINT)
        try:
            print(f"demo exited with {demo.wait(60)} on Ctrl-C")
        except subprocess.TimeoutExpired:
            demo.kill()


if __name__ == "__main__":
    main()
