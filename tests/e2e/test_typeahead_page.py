"""The type-ahead page at `/`, driven in headless Chromium over a real `nextword serve`: a
person types, sees three suggestions for the text as it is, takes one with Tab or a click, and
the page asks nothing of any host but the server.

NEXTWORD_SCREENSHOT=docs/typeahead.png saves the README's screenshot (the shipped model, a word
being completed).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pytest
from support.models import REPO, TinyModel
from support.server import Server, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason=f"headless Chromium ({CHROMIUM}, {CHROMEDRIVER}) not installed",
    ),
]

# Imported after the skip: selenium is in the dev extra.
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

SHIPPED = TinyModel(REPO / "model_store", "ptb", 3)
API_KEY = "typeahead-page-test-key-0123"
SENTENCE = "the company said it expects to report a loss for the third q"

# What the page shows, read in one go: the text, the text the suggestions are for, the words.
READ_PAGE = """
const list = document.getElementById("suggestions");
return {
  text: document.getElementById("text").value,
  for: list.dataset.for ?? null,
  stale: list.classList.contains("stale"),
  words: [...list.querySelectorAll("button")].map((button) => button.dataset.word),
  served: document.getElementById("served").textContent,
  roundTrip: document.getElementById("round-trip").textContent,
  focused: document.activeElement.id,
};
"""


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not SHIPPED.path.is_dir():
        pytest.skip("model_store/ptb/3 is not here")
    with serving(SHIPPED, tmp_path_factory.mktemp("page-shipped")) as server:
        yield server


@pytest.fixture(scope="module")
def keyed(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two models, `tiny` (the default) and `twin`, behind an API key."""
    store = tmp_path_factory.mktemp("page-store")
    for name in ("tiny", "twin"):
        shutil.copytree(tiny_model.path, store / name / str(tiny_model.version))
    model = TinyModel(store, "tiny", tiny_model.version)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("NEXTWORD_API_KEY", API_KEY)  # the server inherits it
        with serving(
            model, tmp_path_factory.mktemp("page-keyed"), more=["--models", "tiny,twin"]
        ) as server:
            yield server


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (a fresh profile: nothing kept from another test), logging every
    request it sends."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--disable-component-update", "--disable-sync",
        "--window-size=900,700", f"--user-data-dir={tmp_path / 'profile'}",
    ]:  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    try:
        yield driver
    finally:
        driver.quit()


def page(driver: Any) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(READ_PAGE)
    return state


def settled(driver: Any) -> dict[str, Any]:
    """The page once its suggestions are for the text as it is now (up to the caret at its end)."""

    def answered(driver: Any) -> dict[str, Any] | Literal[False]:
        state = page(driver)
        return state if state["for"] == state["text"] and not state["stale"] else False

    state: dict[str, Any] = WebDriverWait(driver, 10).until(answered)
    return state


def api_words(server: Server, text: str, **more: Any) -> list[str]:
    body = {"text": text, "top_k": 3, **more}
    answer = httpx.post(server.url + "/predict", json=body, timeout=10).json()
    return [prediction["word"] for prediction in answer["predictions"]]


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser asked the network for since the last call (Chrome's network log;
    its own pages, chrome:// and the like, never leave it)."""
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    urls = [
        event["params"]["request"]["url"]
        for event in events
        if event["method"] == "Network.requestWillBeSent"
    ]
    return [url for url in urls if urlsplit(url).scheme in ("http", "https", "ws", "wss")]


def test_typing_completes_the_word_and_tab_takes_a_suggestion(
    shipped: Server, browser: Any
) -> None:
    browser.get(shipped.url + "/")
    first = settled(browser)  # an empty text: the first words of a sentence
    assert first["words"] == api_words(shipped, "") and len(first["words"]) == 3
    assert first["served"] == "ptb version 3"

    box = browser.find_element("id", "text")
    box.send_keys(SENTENCE)
    typed = settled(browser)
    assert typed["text"] == SENTENCE
    assert typed["words"] == ["quarter", "quarters", "quarterly"] == api_words(shipped, SENTENCE)
    assert typed["roundTrip"].startswith("round trip ") and typed["roundTrip"].endswith(" ms")
    target = os.environ.get("NEXTWORD_SCREENSHOT")
    if target:
        browser.find_element("tag name", "main").screenshot(str(REPO / target))

    box.send_keys(Keys.TAB)  # the word, then a space: next words are suggested
    taken = settled(browser)
    assert taken["text"] == SENTENCE[:-1] + "quarter "
    assert taken["words"] == api_words(shipped, taken["text"])
    assert taken["focused"] == "text"  # Tab took a word; it did not move the focus

    second = taken["words"][1]
    browser.find_elements("css selector", "#suggestions button")[1].click()
    clicked = settled(browser)
    assert clicked["text"] == taken["text"] + second + " "
    assert clicked["focused"] == "text"

    urls = requested_urls(browser)
    assert urls and all(url.startswith(shipped.url + "/") for url in urls), urls
    assert shipped.url + "/predict" in urls


def test_fast_typing_shows_the_answer_for_the_last_key(shipped: Server, browser: Any) -> None:
    browser.get(shipped.url + "/")
    settled(browser)
    box = browser.find_element("id", "text")
    text = ""
    for word in ["the ", "stock ", "market ", "fell ", "sharply ", "on ", "wall ", "st"]:
        box.send_keys(word)  # answers for each word's keys may still be on their way
        text += word
    final = settled(browser)
    assert final["text"] == text
    assert final["words"] == api_words(shipped, text)
    # Debounced: far fewer requests than keys.
    predictions = [url for url in requested_urls(browser) if url.endswith("/predict")]
    assert len(predictions) < len(text)


def test_the_page_asks_for_the_api_key_and_offers_a_choice_of_model(
    keyed: Server, browser: Any
) -> None:
    browser.get(keyed.url + "/")  # the page itself is open
    form = browser.find_element("id", "key-form")
    WebDriverWait(browser, 10).until(lambda _: form.is_displayed())
    assert httpx.post(keyed.url + "/predict", json={"text": ""}).status_code == 401

    browser.find_element("id", "key").send_keys(API_KEY + Keys.ENTER)
    settled(browser)
    assert not form.is_displayed()
    choice = browser.find_element("id", "model")
    assert choice.is_displayed()
    options = [
        option.get_attribute("value") for option in choice.find_elements("css selector", "option")
    ]
    assert options == ["tiny", "twin"]
    assert page(browser)["served"].startswith("tiny version ")

    choice.find_element("css selector", "option[value=twin]").click()
    box = browser.find_element("id", "text")
    box.send_keys("the cat ")
    answer = settled(browser)
    assert answer["served"].startswith("twin version ")
    headers = {"X-API-Key": API_KEY}
    expected = httpx.post(
        keyed.url + "/predict",
        json={"text": "the cat ", "top_k": 3, "model": "twin"},
        headers=headers,
    ).json()
    assert answer["words"] == [p["word"] for p in expected["predictions"]]

    # Kept for the tab: a reload does not ask again.
    browser.refresh()
    settled(browser)
    assert not browser.find_element("id", "key-form").is_displayed()
