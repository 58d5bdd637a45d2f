"""The search page (``GET /``) in a real headless Chromium against a real server.

A uvicorn server on a free loopback port serves the sample catalog; Playwright drives
Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/chromium.sh``; Playwright
never downloads a browser here). The tests type, click and use the keyboard like a
shopper, check what the page shows against what the API answers, run axe-core for
accessibility (no serious or critical violation), and write screenshots (desktop and
360 px wide) to ``build/test-artifacts/``.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
from conftest import REPO, require

from shopsearch.api.app import create_app
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.retrieval.encoders import Encoder

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "build" / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 780}
#: Waits of the page's assertions (a shared CI machine can stall a search for seconds).
WAIT_MS = 20_000
#: A misspelling the sample catalog's rewriter corrects (toliet -> toilet).
TYPO, CORRECTED = "toliet", "toilet"


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    """Playwright's sync API, or a skip (a failure under CI=true) naming what is missing."""
    try:
        from playwright import sync_api
    except ImportError:
        require(False, "playwright is not installed: `.venv/bin/pip install -e '.[dev]'`")
    require(
        CHROMIUM.is_file() or shutil.which("chromium") is not None,
        f"no Chromium at {CHROMIUM}: run `.ci/chromium.sh` (apt-get install chromium)",
    )
    sync_api.expect.set_options(timeout=WAIT_MS)
    return sync_api


@pytest.fixture(scope="module")
def expect(playwright_api: Any) -> Any:
    """Playwright's auto-waiting assertions (``expect(locator).to_have_text(...)``)."""
    return playwright_api.expect


@pytest.fixture(scope="module")
def base_url(
    sample_index: Path, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real server (uvicorn in a thread, the session's encoder) over the sample
    catalog: no trained recommender, so "similar" answers from text neighbours."""
    own = tmp_path_factory.mktemp("search-page")
    settings = Settings(
        index_dir=sample_index,
        reload_interval_s=0,
        models_dir=own / "models",
        events_db=own / "events.db",
        # The page's own searches would otherwise turn into popular-query suggestions
        # (each anonymous search counts as a searcher) while a test compares the list
        # with the API's: catalog suggestions only here (tests/test_suggest.py covers
        # past queries).
        suggest_max_queries=0,
    )
    service = SearchService(settings, encoder=encoder)
    service.load()
    import uvicorn

    # The socket is bound here and handed over: no other process can take the port
    # between choosing and binding it.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, service=service), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server thread died at start-up"
        assert time.monotonic() < deadline, "the server did not start within 60 s"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        service.close()


@pytest.fixture(scope="module")
def browser(playwright_api: Any) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        executable = CHROMIUM if CHROMIUM.is_file() else Path(str(shutil.which("chromium")))
        launched = pw.chromium.launch(executable_path=str(executable), headless=True)
        yield launched
        launched.close()


class Page:
    """One browser tab on the page, with what it asked of other hosts and its errors."""

    def __init__(self, browser: Any, base_url: str, viewport: dict[str, int]) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport=viewport, base_url=base_url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.elsewhere: list[tuple[str, str]] = []
        self.errors: list[str] = []
        # Nothing leaves the machine: the catalog's image URLs (example.com) fail like any
        # unreachable host would, and the page must show its placeholder instead.
        self.context.route(re.compile(r"^(?!" + re.escape(base_url) + r")"), self._refuse)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _refuse(self, route: Any) -> None:
        self.elsewhere.append((route.request.resource_type, route.request.url))
        route.abort()

    def open(self, path: str = "/") -> Any:
        self.page.goto(path)
        return self.page

    def wait_results(self) -> Any:
        """The results of the current URL, once shown (not those of the URL before)."""
        page = self.page
        page.wait_for_selector("#results:not([aria-busy])", state="attached")
        return page.locator("#results > li.card")

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], f"JavaScript errors on the page: {self.errors}"
        # A page that pulls scripts, styles or fonts from a CDN breaks offline.
        assert all(kind == "image" for kind, _ in self.elsewhere), self.elsewhere


@pytest.fixture
def desktop(browser: Any, base_url: str) -> Iterator[Page]:
    page = Page(browser, base_url, DESKTOP)
    yield page
    page.close()


@pytest.fixture
def phone(browser: Any, base_url: str) -> Iterator[Page]:
    page = Page(browser, base_url, PHONE)
    yield page
    page.close()


def api_search(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/v1/search", json=body, timeout=30)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_page_and_assets_are_served(base_url: str) -> None:
    index = httpx.get(f"{base_url}/", timeout=10)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in index.text and 'href="/static/style.css"' in index.text
    assets = [(f"{m}.js", "javascript") for m in ("app", "dom", "facets", "suggest")]
    for asset, kind in [*assets, ("style.css", "text/css")]:
        response = httpx.get(f"{base_url}/static/{asset}", timeout=10)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert httpx.get(f"{base_url}/static/nope.js", timeout=10).status_code == 404
    # Not an API endpoint: the page stays out of the OpenAPI schema.
    paths = httpx.get(f"{base_url}/openapi.json", timeout=10).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_search_facets_and_paging(desktop: Page, base_url: str, expect: Any) -> None:
    page = desktop.open("/")
    box = page.get_by_role("combobox", name="Search products")
    box.fill("cordless drill")
    box.press("Enter")
    page.wait_for_url(re.compile(r"\?q=cordless\+drill$"))
    cards = desktop.wait_results()
    answer = api_search(base_url, {"q": "cordless drill", "size": 12})
    expect(cards).to_have_count(12)
    # The same hits in the same order as the API, with price and stock shown.
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.id)") == [
        h["id"] for h in answer["hits"]
    ]
    first = answer["hits"][0]
    expect(cards.first.locator(".card-title")).to_have_text(first["title"])
    expect(cards.first.locator(".price")).to_have_text(f"${first['price']:,.2f}")
    expect(cards.first.locator(".badge")).to_have_text(
        "In stock" if first["in_stock"] else "Out of stock"
    )
    expect(page.locator("#status")).to_have_text(
        re.compile(rf"^{answer['total']} results for cordless drill in [\d.]+ ms")
    )
    desktop.screenshot("search-desktop", full_page=False)

    # A long brand list shows its first values and a button for the rest.
    brand_boxes = page.locator("#facets input[name=brand]")
    shown = brand_boxes.count()
    more = page.get_by_role("button", name=re.compile(r"^Show all \d+ brands$"))
    expect(more).to_have_attribute("aria-expanded", "false")  # the sample has 14 brands
    more.click()
    fewer = page.get_by_role("button", name="Show fewer")
    expect(fewer).to_be_focused()
    expect(fewer).to_have_attribute("aria-expanded", "true")
    assert brand_boxes.count() > shown
    fewer.click()
    expect(brand_boxes).to_have_count(shown)

    # Pages: the next page shows the API's next hits.
    second = api_search(base_url, {"q": "cordless drill", "size": 12, "page": 2})
    assert second["total"] > 12 and second["hits"]  # else there is no second page to see
    page.get_by_role("button", name="Next").click()
    page.wait_for_url(re.compile(r"page=2"))
    expect(page.get_by_role("button", name="Page 2")).to_have_attribute("aria-current", "page")
    cards = desktop.wait_results()
    expect(cards).to_have_count(len(second["hits"]))
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.id)") == [
        h["id"] for h in second["hits"]
    ]
    # Keyboard focus moved to the results, not left on the button below them.
    assert page.evaluate("document.activeElement.id") == "results-heading"
    page.go_back()
    expect(page.get_by_role("button", name="Page 1")).to_have_attribute("aria-current", "page")
    desktop.wait_results()

    # The most common brand, ticked with the keyboard: every hit is of that brand, and
    # the count its facet showed is the count of results.
    brand = page.locator("#facets input[name=brand]").first
    value = brand.get_attribute("value")
    assert value, "no brand facet"
    label = brand.evaluate("box => box.labels[0].textContent")
    facet_count = int(re.findall(r"\((\d+) products?\)", label)[0])
    brand.focus()
    page.keyboard.press("Space")
    page.wait_for_url(re.compile(r"brand=" + re.escape(quote_plus(value))))
    expect(page.locator("#status")).to_have_text(re.compile(rf"^{facet_count} results? for"))
    cards = desktop.wait_results()
    expect(cards).to_have_count(min(facet_count, 12))
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.brand)") == [value] * cards.count()
    brands = page.locator("#results .card .card-brand").all_inner_texts()
    assert {b.lower() for b in brands} == {value.lower()}
    # The other brands stay listed to widen the choice (the brand facet without itself).
    expect(page.locator("#facets input[name=brand]:not(:checked)").first).to_be_visible()
    expect(page.get_by_role("button", name=f"Remove filter {value}")).to_be_visible()
    page.get_by_role("button", name=f"Remove filter {value}").click()
    page.wait_for_url(re.compile(r"\?q=cordless\+drill$"))
    desktop.wait_results()

    # Category paths drill down a level at a time.
    for level, path in enumerate(("Tools", "Tools > Power Tools", "Tools > Power Tools > Drills")):
        name = path.split(" > ")[-1]
        page.locator("#facets").get_by_role("button", name=re.compile(rf"^{name} \(")).click()
        page.wait_for_url(re.compile(r"category=" + re.escape(quote_plus(path))))
        desktop.wait_results()
        expect(page.locator("#facets .crumbs li")).to_have_count(level + 2)
    expect(page.locator("#facets .crumb.current")).to_have_text("Drills")
    categories = page.locator("#results .card .card-category").all_inner_texts()
    assert categories and all(c == "Tools › Power Tools › Drills" for c in categories)
    page.get_by_role("radio", name=re.compile(r"^\$100 – \$250 \(")).check()
    page.wait_for_url(re.compile(r"price=100-250"))
    desktop.wait_results()
    prices = [
        float(p.replace("$", "").replace(",", ""))
        for p in page.locator("#results .card .price").all_inner_texts()
    ]
    assert prices and all(100 <= p < 250 for p in prices)
    page.get_by_role("button", name="Clear all").click()
    page.wait_for_url(re.compile(r"\?q=cordless\+drill$"))
    expect(page.locator("#active-filters")).to_be_hidden()


def test_rewrite_notice(desktop: Page, expect: Any) -> None:
    page = desktop.open(f"/?q={TYPO}")
    desktop.wait_results()
    notice = page.locator("#rewrite-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(f"Showing results for {CORRECTED} (searched instead of {TYPO})")
    titles = page.locator("#results .card .card-title").all_inner_texts()
    assert any(CORRECTED in t.lower() for t in titles[:3]), titles
    # The shopper can insist on what they typed.
    notice.get_by_role("link", name=re.compile("as typed")).click()
    page.wait_for_url(re.compile(r"raw=1"))
    desktop.wait_results()
    expect(notice).to_be_hidden()


def test_product_page_similar_and_explain(desktop: Page, base_url: str, expect: Any) -> None:
    page = desktop.open("/?q=cordless+drill")
    cards = desktop.wait_results()

    # Explain: every hit shows where each leg ranked it and the scores.
    page.get_by_role("checkbox", name="Explain ranking").check()
    page.wait_for_url(re.compile(r"explain=1"))
    cards = desktop.wait_results()
    explained = api_search(base_url, {"q": "cordless drill", "size": 12, "explain": True})
    boxes = page.locator("#results .card .explain-box")
    expect(boxes).to_have_count(len(explained["hits"]))
    top = explained["hits"][0]["explain"]
    first = boxes.first
    if top.get("dense_rank") is not None:
        expect(first).to_contain_text(f"#{top['dense_rank']} · {top['dense_score']:.4f}")
    if top.get("lexical_rank") is not None:
        expect(first).to_contain_text(f"#{top['lexical_rank']} · {top['lexical_score']:.4f}")
    expect(first).to_contain_text(f"{top['fused_score']:.4f}")
    expect(page.locator("#ranking")).to_contain_text("mode hybrid")
    desktop.screenshot("explain-desktop", full_page=False)
    assert serious_violations(page) == []

    # A product: its page, then similar products, each a link to its own page.
    hit = explained["hits"][0]
    cards.first.get_by_role("link").click()
    page.wait_for_url(re.compile(rf"product={re.escape(hit['id'])}"))
    title = page.get_by_role("heading", level=1, name=hit["title"])
    expect(title).to_be_focused()
    expect(page.locator("#product .description")).to_have_text(hit["description"])
    similar = page.locator("#similar > li")
    expect(page.locator("#similar-section")).to_be_visible()
    expect(similar.first).to_be_visible()
    ids = similar.evaluate_all("ls => ls.map(l => l.dataset.id)")
    assert ids and hit["id"] not in ids
    # No trained recommender here: "bought together" has nothing to show and is hidden.
    expect(page.locator("#bought-section")).to_be_hidden()
    desktop.screenshot("product-desktop")
    assert serious_violations(page) == []
    similar.first.get_by_role("link").click()
    page.wait_for_url(re.compile(rf"product={re.escape(ids[0])}"))
    expect(page.locator("#product h1")).not_to_have_text(hit["title"])
    page.go_back()
    page.go_back()
    desktop.wait_results()
    expect(page.locator("#results .card").first).to_have_attribute("data-id", hit["id"])


def test_phone_width_and_accessibility(phone: Page, expect: Any) -> None:
    page = phone.open("/")
    assert serious_violations(page) == []
    page = phone.open("/?q=cordless+drill")
    phone.wait_results()
    # Readable at 360 px: nothing wider than the screen, facets folded above the results.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    facets = page.locator("#facets")
    expect(facets).to_be_hidden()
    phone.screenshot("search-phone")
    assert serious_violations(page) == []
    toggle = page.get_by_role("button", name=re.compile("^Filters"))
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(facets).to_be_visible()
    phone.screenshot("filters-phone", full_page=False)
    assert serious_violations(page) == []
    page.get_by_role("checkbox", name=re.compile(r"^In stock only")).check()
    page.wait_for_url(re.compile(r"in_stock=1"))
    phone.wait_results()
    badges = page.locator("#results .card .badge").all_inner_texts()
    assert badges and set(badges) == {"In stock"}
    page.locator("#results .card-link").first.click()
    expect(page.locator("#similar-section")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.screenshot("product-phone")
    assert serious_violations(page) == []


def test_suggestions_with_the_keyboard(desktop: Page, base_url: str, expect: Any) -> None:
    """The ARIA combobox: typing lists suggestions (those of GET /v1/suggest), the arrows
    move the active option, Escape closes the list, Enter searches the active option."""
    typed = "cord"
    answer = httpx.get(f"{base_url}/v1/suggest", params={"q": typed, "size": 8}, timeout=10)
    assert answer.status_code == 200, answer.text
    expected = [s["text"] for s in answer.json()["suggestions"]]
    assert len(expected) >= 2, expected  # the sample catalog has cordless tools
    page = desktop.open("/")
    box = page.get_by_role("combobox", name="Search products")
    box.press_sequentially(typed, delay=40)
    listbox = page.get_by_role("listbox", name="Suggestions")
    expect(listbox).to_be_visible()
    expect(box).to_have_attribute("aria-expanded", "true")
    options = listbox.get_by_role("option")
    expect(options).to_have_count(len(expected))
    assert [t.strip() for t in options.locator(".suggestion-text").all_inner_texts()] == expected
    expect(box).not_to_have_attribute("aria-activedescendant", re.compile("."))

    box.press("ArrowDown")
    expect(options.nth(0)).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", options.nth(0).get_attribute("id"))
    box.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    expect(options.nth(0)).to_have_attribute("aria-selected", "false")
    box.press("ArrowUp")
    expect(options.nth(0)).to_have_attribute("aria-selected", "true")
    desktop.screenshot("suggestions-desktop", full_page=False)
    assert serious_violations(page) == []

    box.press("Escape")  # closes the list, keeps the text
    expect(listbox).to_be_hidden()
    expect(box).to_have_attribute("aria-expanded", "false")
    expect(box).to_have_value(typed)

    box.press("ArrowDown")  # opens it again
    expect(listbox).to_be_visible()
    box.press("ArrowDown")
    box.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    box.press("Enter")
    page.wait_for_url(re.compile(r"\?q=" + re.escape(quote_plus(expected[1])) + "$"))
    desktop.wait_results()
    expect(box).to_have_value(expected[1])
    expect(listbox).to_be_hidden()
    expect(page.locator("#status")).to_contain_text(f"results for {expected[1]}")
