"""Drives the operator dashboard in headless Debian chromium (Playwright, no browser
download). Run by tests/it/dashboard_browser.rs, which owns the server and checks the
server side: at each `STEP name` line printed here it does its part, then writes a line
on stdin to let this script go on.

Environment: BASE (http://127.0.0.1:PORT), ADMIN_KEY, AGENT_KEY (a non-admin key),
ENTRY_ID and DEVICE_NAME (a pending pairing), NEW_AGENT (registered by the test later).
"""
import os
import sys

from playwright.sync_api import sync_playwright, expect

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
# Over HTTPS (BASE=https://…), the browser trusts the test server's key alone (SPKI: the
# base64 SHA-256 of its SubjectPublicKeyInfo); certificate errors stay errors otherwise.
if os.environ.get("SPKI"):
    ARGS.append("--ignore-certificate-errors-spki-list=" + os.environ["SPKI"])
# Generous: the page is pushed changes about every 500 ms; this only bounds a hang.
WAIT_MS = 15_000

BASE = os.environ["BASE"]
ENTRY = os.environ["ENTRY_ID"]


def step(name):
    print(f"STEP {name}", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"test harness said {line!r} after {name}")


def no_horizontal_scroll(page, view):
    width = page.evaluate("document.documentElement.scrollWidth")
    client = page.evaluate("document.documentElement.clientWidth")
    assert width <= client, f"{view}: page is {width}px wide in a {client}px window"


def main():
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        expect.set_options(timeout=WAIT_MS)
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

        page.goto(BASE + "/")
        assert page.url.startswith(BASE), page.url
        # Before sign-in: the login form and nothing else.
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#app")).to_be_hidden()

        # A wrong key is refused with a clear message (typed and sent from the keyboard).
        page.locator("#api-key").focus()
        page.keyboard.type("ak_not_a_key")
        page.keyboard.press("Enter")
        expect(page.locator("#login-error")).to_contain_text("not known")
        expect(page.locator("#app")).to_be_hidden()
        # A valid key without the admin role is refused too.
        page.fill("#api-key", os.environ["AGENT_KEY"])
        page.keyboard.press("Enter")
        expect(page.locator("#login-error")).to_contain_text("not admin")
        expect(page.locator("#app")).to_be_hidden()

        page.fill("#api-key", os.environ["ADMIN_KEY"])
        page.keyboard.press("Enter")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#login")).to_be_hidden()
        token = page.evaluate("sessionStorage.getItem('chatixia.admin.token')")
        assert token and token.count(".") == 2, "the admin JWT is kept in sessionStorage"
        expect(page.locator("#live")).to_have_class("live on")
        expect(page.locator("#stat-cards .card").first).to_contain_text("Agents online")
        expect(page.locator("#stat-cards")).to_contain_text("Awaiting approval")
        no_horizontal_scroll(page, "overview")

        # Agents and tasks registered by the test.
        page.click("#tabs a[data-view=agents]")
        expect(page.locator('tr[data-agent="agent-alpha"]')).to_be_visible()
        expect(page.locator('tr[data-agent="agent-beta"]')).to_contain_text("search")
        page.fill("#agents-q", "beta")
        expect(page.locator("#agents-table tbody tr")).to_have_count(1)
        page.fill("#agents-q", "")
        expect(page.locator("#agents-table tbody tr[data-agent]")).to_have_count(2)
        # Sorted by the server: agent id descending (the header toggles) puts beta first.
        page.click("#agents-table th button[data-sort=id]")
        expect(page.locator("#agents-table tbody tr").first).to_have_attribute("data-agent", "agent-beta")
        page.click("#agents-table th button[data-sort=id]")
        expect(page.locator("#agents-table tbody tr").first).to_have_attribute("data-agent", "agent-alpha")
        no_horizontal_scroll(page, "agents")

        page.click("#tabs a[data-view=tasks]")
        expect(page.locator("#tasks-table tbody tr[data-task]")).to_have_count(2)
        expect(page.locator("#tasks-table")).to_contain_text("translate")
        page.select_option("#tasks-state", "assigned")
        expect(page.locator("#tasks-table tbody tr[data-task]")).to_have_count(1)
        page.select_option("#tasks-state", "")
        no_horizontal_scroll(page, "tasks")

        page.click("#tabs a[data-view=topology]")
        expect(page.locator('#topology g[data-agent="agent-alpha"]')).to_be_visible()
        page.click("#tabs a[data-view=shards]")
        expect(page.locator("#shards-table tbody tr")).to_have_count(int(os.environ["SHARDS"]))

        # The pending pairing: approve it from the page.
        page.click("#tabs a[data-view=pairing]")
        card = page.locator(f'#pending-list [data-entry="{ENTRY}"]')
        expect(card).to_contain_text(os.environ["DEVICE_NAME"])
        card.get_by_role("button", name="Approve").click()
        approved = page.locator(f'#approved-table tr[data-entry="{ENTRY}"]')
        expect(approved).to_be_visible()
        no_horizontal_scroll(page, "pairing")
        step("approved")  # the test checks the API and connects as the device

        approved.get_by_role("button", name="Revoke").click()
        expect(approved).to_have_count(0)
        expect(page.locator("#history-table")).to_contain_text("revoked")
        step("revoked")  # the test sees the device's WebSocket closed with 4001

        # An invite code, shown large with its expiry counting down.
        page.click("#new-code")
        # Long by default (issue 20): 12 Crockford base32 symbols in groups of four,
        # with the way to redeem it from any HTTP client.
        expect(page.locator("#invite .code")).to_have_text(
            __import__("re").compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$"))
        expect(page.locator("#invite .redeem")).to_contain_text("/api/pairing/pair")
        no_horizontal_scroll(page, "invite")
        expect(page.locator("#invite .expiry")).to_contain_text("Expires in")

        # A new agent appears on the open page without a reload.
        page.click("#tabs a[data-view=agents]")
        expect(page.locator('tr[data-agent="agent-alpha"]')).to_be_visible()
        page.evaluate("window.__noReload = true")
        step("watching")  # the test registers NEW_AGENT through the API
        expect(page.locator(f'tr[data-agent="{os.environ["NEW_AGENT"]}"]')).to_be_visible()
        assert page.evaluate("window.__noReload === true"), "the page was reloaded"

        # Log out: back to the login, token gone.
        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('chatixia.admin.token')") is None
        browser.close()
    # The 401 of the wrong key shows as a failed resource load in Chromium's console:
    # that one is the expected refusal, not a page error.
    expected = [e for e in errors if "Failed to load resource" in e and "401" in e]
    assert len(expected) <= 1, f"one refused sign-in, not: {expected}"
    errors = [e for e in errors if e not in expected]
    assert not errors, "console errors: " + "; ".join(errors)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
