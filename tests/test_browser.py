"""The demo in a real browser: Playwright driving Debian's Chromium against `sbio run`.

Each test starts its own `sbio run` (a subprocess, in the test's temporary
directory, so the SQLite database lands there) with the repository's
namespaces and static files. Playwright's sync API runs in the test process:
it works under the sbio plugin's gevent monkey-patching (the server is in
another process, so nothing here has to cooperate with it). Every wait has a
timeout; each test leaves one screenshot per page in its tmp_path.
"""
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from test_demo import REPO, free_port, start_demo, stop_demo

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
#: Milliseconds any single Playwright action or wait may take.
WAIT_MS = 15_000

#: What Chromium logs while the server is down and the page retries; allowed
#: only in that window (see test_page_reconnects_and_resubscribes_after_a_restart).
NETWORK_ERROR = re.compile(r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE"
                           r"|WebSocket connection to .* failed")


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

    def open(self, name, path="/board/"):
        context = self.browser.new_context(viewport={"width": 1200, "height": 760})
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

    def login(self, name, user, password="secret"):
        page = self.open(name)
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("#login-form button[type=submit]")
        if password == "secret":
            page.wait_for_selector("#board-view:not([hidden])")
            page.wait_for_selector("#columns .column")
        return page

    def screenshots(self):
        for name, page in self.pages.items():
            page.screenshot(path=str(self.tmp_path / f"{name}.png"), full_page=True)

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
