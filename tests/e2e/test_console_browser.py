"""The web console in a real browser: headless Chromium driven by Selenium, against the whole
system (five service processes, a real nats-server) and ``choreo console`` as a process.

Chromium and its driver come from Debian (``apt-get install chromium chromium-driver``; CI's
``.ci/run`` installs them). Without them this test fails, it does not skip.

Set ``CHOREO_CONSOLE_SCREENSHOT=docs/console.png`` to keep the saga page's screenshot.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from services.system import System
from shop.order.v1 import order_service_pb2 as order_pb
from tests.console.harness import (
    Console,
    dead_letter_a_saga,
    get_order,
    place_order,
    running_console,
    running_system,
    wait_for_events,
    wait_until_done,
)

HAPPY_EVENTS = [
    "OrderCreated",
    "InventoryReserved",
    "PaymentCompleted",
    "OrderConfirmed",
    "ShipmentCreated",
    "OrderShipped",
    "InventoryShipped",
    "NotificationSent",
]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("console-browser")) as running:
        yield running


@pytest.fixture(scope="module")
def console(system: System) -> Iterator[Console]:
    with running_console(system) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if driver_path is None or chromium is None:
        pytest.fail(
            "this test needs Chromium and chromedriver: apt-get install -y chromium"
            " chromium-driver (.ci/run installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1100")
    # The driver given explicitly: Selenium must not try to download one (no internet).
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(browser: WebDriver, timeout: float = 30) -> WebDriverWait[WebDriver]:
    # Pages of running sagas reload themselves: an element may go stale while we look.
    return WebDriverWait(
        browser, timeout, poll_frequency=0.25, ignored_exceptions=[StaleElementReferenceException]
    )


def timeline_events(browser: WebDriver) -> list[str]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")
    return [str(row.get_attribute("data-event")) for row in rows]


def test_an_order_shows_in_the_list_and_its_saga_page_has_the_timeline_and_the_path(
    system: System, console: Console, browser: WebDriver
) -> None:
    order_id = asyncio.run(place_order(system, customer="cust-browser"))
    asyncio.run(wait_until_done(system, order_id))
    # Done is final and told; InventoryShipped is off that path and may still be on its way.
    asyncio.run(wait_for_events(system, order_id, HAPPY_EVENTS))

    browser.get(console.url + "/")
    assert browser.current_url.endswith("/sagas")  # the index is the sagas list
    row = browser.find_element(By.CSS_SELECTOR, f"tr.saga[data-order-id='{order_id}']")
    assert "shipped" in row.find_element(By.CSS_SELECTOR, ".outcome").text
    assert "cust-browser" in row.text
    row.find_element(By.TAG_NAME, "a").click()

    wait(browser).until(lambda b: b.find_element(By.ID, "order-id").text == order_id)
    assert browser.find_element(By.ID, "outcome").text == "shipped"
    events = timeline_events(browser)
    assert events[0] == "OrderCreated"
    assert sorted(events) == sorted(HAPPY_EVENTS)
    timeline = browser.find_element(By.ID, "timeline").text
    assert "OrderCreated" in timeline and "OrderConfirmed" in timeline
    assert "NotificationSent" in timeline
    # A payload, decoded from Protobuf to JSON, opens under its row.
    first = browser.find_element(By.CSS_SELECTOR, "#timeline tr.event")
    first.find_element(By.TAG_NAME, "summary").click()
    payload = first.find_element(By.CSS_SELECTOR, "pre.payload").text
    assert f'"order_id": "{order_id}"' in payload and '"customer_id": "cust-browser"' in payload

    svg = browser.find_element(By.CSS_SELECTOR, "svg#saga-path")
    assert svg.is_displayed() and svg.size["width"] > 100 and svg.size["height"] > 100
    nodes = svg.find_elements(By.CSS_SELECTOR, "g.node")
    drawn = {str(node.get_attribute("data-event")) for node in nodes}
    assert drawn == {"PlaceOrder", *HAPPY_EVENTS}
    arrows = svg.find_elements(By.CSS_SELECTOR, "g.arrow")
    assert len(arrows) == len(HAPPY_EVENTS)  # one per event: from its cause
    assert not svg.find_elements(By.CSS_SELECTOR, "g.node.failure, g.node.compensation")

    keep = os.environ.get("CHOREO_CONSOLE_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(keep)


def test_a_dead_letter_replayed_from_the_page_completes_its_saga(
    system: System, console: Console, browser: WebDriver
) -> None:
    order_id = asyncio.run(dead_letter_a_saga(system))

    def letter_row(b: WebDriver) -> bool:
        b.get(console.url + "/dead-letters")
        return bool(b.find_elements(By.CSS_SELECTOR, f"tr.letter a[href='/sagas/{order_id}']"))

    wait(browser, 60).until(letter_row)
    (row,) = [
        row for row in browser.find_elements(By.CSS_SELECTOR, "tr.letter") if order_id in row.text
    ]
    assert "notification" in row.text and "OrderShipped" in row.text
    assert "ALARM" in row.text and "delivery_limit_exceeded" in row.text
    seq = str(row.get_attribute("data-seq"))

    # Before the replay the saga waits: shipped, its customer never told.
    order = asyncio.run(get_order(system, order_id))
    assert order.status == order_pb.ORDER_STATUS_SHIPPED and not order.customer_notified

    # The detail view, then Replay (a POST, then a redirect back to the letter).
    row.find_element(By.CSS_SELECTOR, f"a[href='/dead-letters/{seq}']").click()
    wait(browser).until(lambda b: b.find_element(By.TAG_NAME, "h1").text == f"Dead letter {seq}")
    assert "delivery_limit_exceeded" in browser.find_element(By.ID, "letter").text
    assert order_id in browser.find_element(By.CSS_SELECTOR, "pre.payload").text
    browser.find_element(By.ID, "replay").click()
    notice = wait(browser).until(lambda b: b.find_element(By.ID, "replayed"))
    assert f":replay:{seq}" in notice.text
    assert browser.current_url.split("?")[0].endswith(f"/dead-letters/{seq}")

    # Follow the saga: its page refreshes itself until the customer has been told.
    notice.find_element(By.CSS_SELECTOR, "a.saga-link").click()
    wait(browser, 60).until(lambda b: b.find_element(By.ID, "outcome").text == "shipped")
    events = timeline_events(browser)
    assert events.count("OrderShipped") == 2  # the original and the replayed copy
    assert "NotificationSent" in events
    assert f"replayed copy of dead letter {seq}" in browser.find_element(By.ID, "timeline").text
    order = asyncio.run(get_order(system, order_id))
    assert order.status == order_pb.ORDER_STATUS_SHIPPED and order.customer_notified
