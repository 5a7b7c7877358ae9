"""Headless Chromium from the distribution's packages (chromium + chromium-driver), driven by Selenium
(`siemcrew serve` on loopback comes from emulators/e2e_helpers.py). Nothing here downloads anything: the driver and browser paths
are the Debian ones (or SIEMCREW_CHROMIUM / SIEMCREW_CHROMEDRIVER), and a missing browser fails loudly."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Selenium Manager would look for drivers online and send usage stats: neither may happen here
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
    # no Google services, updates or first-run traffic: the browser may talk to 127.0.0.1 only
    "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-default-apps",
    "--disable-sync", "--disable-extensions", "--disable-client-side-phishing-detection", "--disable-domain-reliability",
    "--metrics-recording-only", "--no-default-browser-check", "--no-pings", "--mute-audio",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def _find(env: str, *names: str) -> str:
    for candidate in [os.environ.get(env, ""), *names]:
        found = shutil.which(candidate) if candidate and not os.path.isabs(candidate) else candidate
        if found and os.path.exists(found):
            return found
    raise RuntimeError(f"{names[0]} not found: install the distribution's chromium and chromium-driver "
                       f"(apt-get install chromium chromium-driver) or set {env}")


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium session; its performance log lists every request the pages made."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find("SIEMCREW_CHROMIUM", "chromium", "/usr/bin/chromium", "chromium-browser")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=_find("SIEMCREW_CHROMEDRIVER", "chromedriver", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser asked for since the last call (from the DevTools performance log)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
