"""The demo in a real browser: Playwright driving Debian's Chromium against `sbio run`.

Each test starts its own `sbio run` (a subprocess, in the test's temporary
directory, so the SQLite database lands there) with the repository's
namespaces and static files. Playwright's sync API runs in the test process:
it works under the sbio plugin's gevent monkey-patching (the server is in
another process, so nothing here has to cooperate with it). Every wait has a
timeout; each test leaves one screenshot per page in its tmp_path (and the
layout and offline tests one per step they check).
"""
import os
import re
import signal
import subprocess
import sys
import textwrap
from itertools import pairwise

import pytest

from test_demo import REPO, free_port, start_demo, stop_demo

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
#: Milliseconds any single Playwright action or wait may take.
WAIT_MS = 15_000

#: What Chromium logs while the server is down (or the browser offline) and the
#: page retries; allowed only in that window (see
#: test_page_reconnects_and_resubscribes_after_a_restart).
NETWORK_ERROR = re.compile(r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE"
                           r"|ERR_INTERNET_DISCONNECTED|WebSocket connection to .* failed")
#: A desktop window, and a phone's (an iPhone 12 to 15 is 390 CSS pixels wide).
WIDE = {"width": 1200, "height": 760}
NARROW = {"width": 390, "height": 844}


class Demo:
    """A `sbio run` serving the demo from a temporary directory; restartable."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.output = []

    def start(self):
        # Statistics every 0.5 s, so the footer fills quickly.
        self.proc = start_demo(self.workdir, self.port, BOARD_STATS__INTERVAL="0.5")

    def kill(self):
        """Kill the server outright (SIGKILL: no goodbye to the clients)."""
        self.proc.send_signal(signal.SIGKILL)
        self.output.append(self.proc.communicate(timeout=10)[0])

    def stop(self):
        if self.proc is not None and self.proc.returncode is None:
            self.output.append(stop_demo(self.proc))


@pytest.fixture
def demo(tmp_path, static_node_modules):
    server = Demo(tmp_path)
    server.start()
    yield server
    server.stop()
    log = "\n".join(server.output)
    print(f"--- sbio run output ({server.url}) ---\n{log}")   # shown when the test fails
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def browser(sbio_chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=sbio_chromium,
                                              args=CHROMIUM_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


class Pages:
    """Opens pages in separate browser contexts (separate users) and watches their consoles."""

    def __init__(self, browser, demo, tmp_path):
        self.browser = browser
        self.demo = demo
        self.tmp_path = tmp_path
        self.pages = {}
        self.contexts = []
        self.problems = []          # (page name, kind, text): console errors, page errors
        self.tolerate_network_errors = False

    def open(self, name, path="/board/", viewport=WIDE):
        context = self.browser.new_context(viewport=viewport)
        context.set_default_timeout(WAIT_MS)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", lambda msg: self._console(name, msg))
        page.on("pageerror", lambda exc: self.problems.append((name, "pageerror", str(exc))))
        page.goto(self.demo.url + path)
        self.pages[name] = page
        return page

    def _console(self, name, msg):
        if msg.type != "error":
            return
        if self.tolerate_network_errors and NETWORK_ERROR.search(msg.text):
            return
        where = (msg.location or {}).get("url", "")
        self.problems.append((name, "console", f"{msg.text} ({where})"))

    def login(self, name, user, password="secret", viewport=WIDE):
        page = self.open(name, viewport=viewport)
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("#login-form button[type=submit]")
        if password == "secret":
            page.wait_for_selector("#board-view:not([hidden])")
            page.wait_for_selector("#columns .column")
        return page

    def screenshot(self, page, name):
        """Save *page* now as ``<tmp_path>/<name>.png``."""
        page.screenshot(path=str(self.tmp_path / f"{name}.png"), full_page=True)

    def screenshots(self):
        for name, page in self.pages.items():
            self.screenshot(page, name)

    def close(self):
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser, demo, tmp_path):
    opened = Pages(browser, demo, tmp_path)
    yield opened
    try:
        opened.screenshots()
    finally:
        opened.close()


def add_card(page, title):
    page.fill("#card-title", title)
    page.press("#card-title", "Enter")


def column(page, name):
    return page.locator(f'.column[data-column="{name}"]')


def test_two_users_see_each_others_cards_without_reload(pages):
    ann = pages.login("ann", "ann")
    bob = pages.login("bob", "bob")
    for page in (ann, bob):
        page.wait_for_selector("#status.status-open")
        assert page.inner_text("#board-title") == "main"

    add_card(ann, "Write the tutorial")
    bob_card = column(bob, "To do").locator(".card", has_text="Write the tutorial")
    bob_card.wait_for()                                     # pushed, no reload
    assert "by ann" in bob_card.inner_text()
    bob.wait_for_selector("#activity >> text=ann added “Write the tutorial”")
    ann.wait_for_selector("#activity >> text=you added “Write the tutorial”")   # her own too

    bob_card.get_by_role("button", name="Move to Doing").click()
    column(ann, "Doing").locator(".card", has_text="Write the tutorial").wait_for()
    assert column(ann, "To do").locator(".card").count() == 0
    ann.wait_for_selector(".boards a.active >> text=1")     # the board list counts it

    # The DaemonTask's statistics reach both pages.
    for page in (ann, bob):
        page.wait_for_selector("#stats >> text=Online: ann, bob")
    assert pages.problems == []


def test_wrong_password_shows_the_error(pages):
    page = pages.open("visitor", "/")
    page.click('a[href="/board/"]')                         # the index links the demo
    page.wait_for_selector("#login-view:not([hidden])")
    assert "password secret" in page.inner_text(".hint")

    page.fill("#username", "ann")
    page.fill("#password", "not the password")
    page.click("#login-form button[type=submit]")
    error = page.locator("#login-error")
    error.wait_for(state="visible")
    assert error.inner_text() == "Wrong user name or password."
    assert page.locator("#board-view").is_hidden()

    page.fill("#password", "secret")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#board-view:not([hidden])")
    assert page.inner_text("#me") == "Logged in as ann"
    page.reload()                                           # the token keeps the login
    page.wait_for_selector("#board-view:not([hidden])")
    assert page.locator("#login-view").is_hidden()
    assert pages.problems == []


ADD_CARD_OFFLINE = textwrap.dedent("""
    import board
    from board.models import Card, Session
    with Session() as s:
        s.add(Card(board=s.board("main"), column="Done", title="added while the server was down",
                   author="bob"))
""")


def test_page_reconnects_and_resubscribes_after_a_restart(pages, demo):
    ann = pages.login("ann", "ann")
    add_card(ann, "before the restart")
    column(ann, "To do").locator(".card", has_text="before the restart").wait_for()

    pages.tolerate_network_errors = True    # the retries while the server is down log these
    demo.kill()
    ann.wait_for_selector("#status.status-connecting")
    # The database changes while nobody is connected: only a fresh result shows this card.
    subprocess.run([sys.executable, "-c", ADD_CARD_OFFLINE], cwd=demo.workdir, check=True,
                   timeout=60, env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "namespaces")))
    demo.start()

    # sbio.js retries with backoff: up to 10 s (+50 % jitter) between attempts.
    ann.wait_for_selector("#status.status-open", timeout=45_000)
    column(ann, "Done").locator(".card", has_text="added while the server was down").wait_for()
    pages.tolerate_network_errors = False
    assert column(ann, "To do").locator(".card").all_inner_texts()[0].startswith(
        "before the restart")
    assert ann.locator("#login-view").is_hidden()           # logged in again by its token

    bob = pages.login("bob", "bob")                         # live again: bob's card arrives
    add_card(bob, "after the restart")
    column(ann, "To do").locator(".card", has_text="after the restart").wait_for()
    # The room was joined again too: the activity message reaches ann.
    ann.wait_for_selector("#activity >> text=bob added “after the restart”")
    assert pages.problems == []


def test_page_comes_back_after_a_graceful_restart(pages, demo):
    # SIGTERM (or Ctrl-C) stops the server gracefully: it closes the
    # transports, so socket.io-client (and sbio.js) reconnects by itself once
    # the server is back, without the Reconnect button.
    ann = pages.login("ann", "ann")
    add_card(ann, "survives a graceful restart")
    column(ann, "To do").locator(".card", has_text="survives a graceful restart").wait_for()

    pages.tolerate_network_errors = True
    demo.stop()
    ann.wait_for_selector("#status.status-closed, #status.status-connecting")
    demo.start()
    reconnect = ann.locator("#reconnect")
    ann.wait_for_selector("#status.status-open", timeout=45_000)
    pages.tolerate_network_errors = False
    assert reconnect.is_hidden()
    column(ann, "To do").locator(".card", has_text="survives a graceful restart").wait_for()

    bob = pages.login("bob", "bob")
    add_card(bob, "live again")
    column(ann, "To do").locator(".card", has_text="live again").wait_for()
    assert pages.problems == []


def test_log_out_and_in_again_on_the_same_page(pages):
    ann = pages.login("ann", "ann")
    bob = pages.login("bob", "bob")
    ann.click("#logout")
    ann.wait_for_selector("#login-view:not([hidden])")
    add_card(bob, "while ann was out")                      # the logged-out page gets nothing
    column(bob, "To do").locator(".card", has_text="while ann was out").wait_for()

    ann.fill("#username", "ann")
    ann.fill("#password", "secret")
    ann.click("#login-form button[type=submit]")
    ann.wait_for_selector("#board-view:not([hidden])")
    column(ann, "To do").locator(".card", has_text="while ann was out").wait_for()
    add_card(bob, "ann is back")                            # subscriptions and room again
    column(ann, "To do").locator(".card", has_text="ann is back").wait_for()
    ann.wait_for_selector("#activity >> text=bob added “ann is back”")
    assert ann.locator("#activity >> text=while ann was out").count() == 0
    assert pages.problems == []


# -- a phone-sized screen -------------------------------------------------------------

#: The top bar's height and vertical padding, and of each visible part its box
#: and the lines its text takes (the distinct tops of the text's boxes).
TOPBAR_BOXES = """() => {
  const bar = document.querySelector(".topbar");
  const style = getComputedStyle(bar);
  const lines = el => {
    const range = document.createRange();
    range.selectNodeContents(el);
    const tops = Array.from(range.getClientRects()).filter(r => r.width > 0)
      .map(r => r.top).sort((a, b) => a - b);
    return tops.filter((top, i) => i === 0 || top - tops[i - 1] > 3).length;
  };
  const parts = Array.from(bar.children).map(el => [el, el.getBoundingClientRect()])
    .filter(([el, box]) => box.width > 0 && box.height > 0);
  return {
    height: bar.getBoundingClientRect().height,
    padding: parseFloat(style.paddingTop) + parseFloat(style.paddingBottom),
    parts: parts.map(([el, box]) => ({name: el.id || el.className, top: box.top,
                                      bottom: box.bottom, left: box.left, right: box.right,
                                      lines: lines(el)})),
  };
}"""


def boxes(page, selector):
    return [page.locator(selector).nth(i).bounding_box()
            for i in range(page.locator(selector).count())]


def test_narrow_screen_stacks_the_columns_and_keeps_the_header_on_one_line(pages):
    phone = pages.login("phone", "ann", viewport=NARROW)
    add_card(phone, "Fits on a phone")
    column(phone, "To do").locator(".card", has_text="Fits on a phone").wait_for()
    desk = pages.login("desk", "bob")
    column(desk, "To do").locator(".card", has_text="Fits on a phone").wait_for()
    pages.screenshot(phone, "narrow")
    pages.screenshot(desk, "wide")

    # On the desk the three columns stand side by side ...
    wide = boxes(desk, "#columns .column")
    assert len(wide) == 3
    assert len({round(box["y"]) for box in wide}) == 1
    assert all(a["x"] + a["width"] <= b["x"] for a, b in pairwise(wide))
    # ... on the phone one under the other, each the width of the board, no overlap.
    narrow = boxes(phone, "#columns .column")
    assert len(narrow) == 3
    board = phone.locator("#columns").bounding_box()
    for box in narrow:
        assert abs(box["x"] - board["x"]) < 1 and abs(box["width"] - board["width"]) < 1
    assert all(a["y"] + a["height"] <= b["y"] for a, b in pairwise(narrow))
    assert board["width"] > NARROW["width"] * 0.8
    # Nothing sticks out sideways: the page does not scroll horizontally.
    assert phone.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    # The boards, the board and the activity follow each other too.
    order = [phone.locator(sel).bounding_box() for sel in
             (".boards-panel", ".board", ".activity-panel")]
    assert all(a["y"] + a["height"] <= b["y"] for a, b in pairwise(order))

    # The top bar is one line: its parts side by side within the screen, the text
    # of each on one line, and it is no higher than its tallest part and its padding.
    for page, width in [(phone, NARROW["width"]), (desk, WIDE["width"])]:
        bar = page.evaluate(TOPBAR_BOXES)
        parts = bar["parts"]
        assert {"brand", "status", "me", "logout"} <= {p["name"].split()[0] for p in parts}
        assert [p["lines"] for p in parts] == [1] * len(parts), parts
        assert max(p["top"] for p in parts) < min(p["bottom"] for p in parts), parts
        assert all(a["right"] <= b["left"] for a, b in pairwise(parts)), parts
        assert parts[-1]["right"] <= width
        tallest = max(p["bottom"] - p["top"] for p in parts)
        assert bar["height"] <= tallest + bar["padding"] + 1, bar
    assert phone.inner_text("#me") == "ann"                # "Logged in as" left out
    assert desk.inner_text("#me") == "Logged in as bob"
    assert pages.problems == []


# -- actions taken while disconnected -----------------------------------------------


def test_an_action_taken_offline_waits_and_goes_out_on_reconnect(pages):
    ann = pages.login("ann", "ann")
    bob = pages.login("bob", "bob")
    pages.tolerate_network_errors = True
    ann.context.set_offline(True)                          # the websocket drops at once
    ann.wait_for_selector("#status.status-connecting")

    add_card(ann, "Written offline")
    note = ann.locator("#outbox li", has_text="Add card “Written offline”")
    note.wait_for()
    assert note.get_attribute("data-state") == "waiting"   # shown at once, before any answer
    assert "waiting for the connection" in note.inner_text()
    assert ann.input_value("#card-title") == ""            # ready for the next one
    assert column(ann, "To do").locator(".card").count() == 0
    pages.screenshot(ann, "offline-waiting")

    ann.context.set_offline(False)
    ann.wait_for_selector("#status.status-open", timeout=45_000)
    ann.wait_for_selector('#outbox li[data-state="sent"] >> text=done: sent when the '
                          "connection came back")
    pages.tolerate_network_errors = False
    for page in (ann, bob):
        column(page, "To do").locator(".card", has_text="Written offline").wait_for()
    ann.wait_for_selector("#activity >> text=you added “Written offline”")
    bob.wait_for_selector("#activity >> text=ann added “Written offline”")
    pages.screenshot(ann, "offline-sent")
    assert pages.problems == []


def test_an_action_taken_offline_that_fails_says_why(pages):
    ann = pages.login("ann", "ann", viewport=NARROW)
    bob = pages.login("bob", "bob")
    add_card(bob, "Soon gone")
    card = column(ann, "To do").locator(".card", has_text="Soon gone")
    card.wait_for()

    pages.tolerate_network_errors = True
    ann.context.set_offline(True)
    ann.wait_for_selector("#status.status-connecting")
    card.get_by_role("button", name="Move to Doing").click()
    note = ann.locator("#outbox li", has_text="Move “Soon gone” to Doing")
    note.wait_for()
    assert note.get_attribute("data-state") == "waiting"
    # Meanwhile bob deletes the card: the move cannot succeed any more.
    column(bob, "To do").locator(".card", has_text="Soon gone").get_by_role(
        "button", name="Delete").click()
    column(bob, "To do").locator(".card").first.wait_for(state="detached")
    pages.screenshot(ann, "offline-waiting")

    ann.context.set_offline(False)
    ann.wait_for_selector("#status.status-open", timeout=45_000)
    ann.wait_for_selector('#outbox li[data-state="failed"] >> text=failed: That card does '
                          "not exist (any more).")
    pages.tolerate_network_errors = False
    card.wait_for(state="detached")                        # the fresh cards arrived too
    assert ann.locator("#error").is_hidden()               # said once, in the outbox
    pages.screenshot(ann, "offline-failed")
    assert pages.problems == []
