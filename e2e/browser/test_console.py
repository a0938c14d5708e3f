"""The web console at /ui: overview, key browser, watch and membership."""

import re
import time

from playwright.sync_api import expect


def open_view(page, env, view):
    page.goto(env.url("/ui#" + view))
    expect(page.locator("#view-" + view)).to_be_visible()


def test_overview_shows_the_cluster_and_live_charts(page, env):
    open_view(page, env, "overview")
    expect(page.locator("#sum-cluster")).to_have_text("phxkv-dev")
    expect(page.locator("#sum-node")).to_contain_text("n1")
    expect(page.locator("#sum-master")).to_have_text(re.compile(r"^n[123]$"))
    expect(page.locator("#sum-ready")).to_have_text("ready")
    expect(page.locator("#sum-index")).to_have_text(re.compile(r"^[\d,]+ / [\d,]+$"))
    rows = page.locator("#overview-members tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#overview-members .tag.master")).to_have_count(1)
    for name in ("n1", "n2", "n3"):
        row = page.locator(f'#overview-members tr[data-member="{name}"]')
        expect(row).to_contain_text("voter")
        expect(row).to_contain_text("up")
    # Traffic while the page samples /metrics: the throughput chart's legend
    # shows a rate above zero and the latency chart a p99.
    deadline = time.monotonic() + 20
    legend = page.locator("#legend-throughput")
    i = 0
    while time.monotonic() < deadline:
        for _ in range(10):
            env.put(f"overview/{i % 20}", "x" * (i % 7))
            i += 1
        text = legend.inner_text()
        match = re.search(r"ok ([\d.]+)/s", text)
        if match and float(match.group(1)) > 0:
            break
        page.wait_for_timeout(300)
    else:
        raise AssertionError(f"throughput never showed traffic: {legend.inner_text()!r}")
    expect(page.locator("#legend-latency")).to_contain_text(re.compile(r"p99 [\d.]+ (µs|ms|s)"))
    # The canvas was drawn on: not every pixel is blank.
    painted = page.evaluate(
        """() => {
            const c = document.getElementById('chart-throughput');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
        }"""
    )
    assert painted > 500, f"the throughput chart looks empty ({painted} pixels)"
    if env.screenshots:
        # A picture needs some history on the charts: half a minute of load.
        until = time.monotonic() + 30
        while time.monotonic() < until:
            for _ in range(5):
                env.put(f"overview/{i % 20}", "x" * (i % 7))
                i += 1
            page.wait_for_timeout(50 + 100 * (int(until - time.monotonic()) % 3))
        page.wait_for_timeout(2500)
        env.screenshot(page, "overview")


def test_key_browser_puts_gets_lists_and_deletes(page, env):
    prefix = f"browser-{env.run}/"
    prefix_hex = prefix.encode().hex()
    open_view(page, env, "keys")
    message = page.locator("#kv-message")
    page.fill("#kv-key", prefix + "alpha")
    page.fill("#kv-value", "first value")
    page.click("#kv-put")
    expect(message).to_have_class(re.compile(r"\bok\b"))
    expect(message).to_contain_text("version is now 1")

    page.click("#kv-get")
    expect(page.locator("#kv-view")).to_have_text("first value")
    expect(page.locator("#kv-meta")).to_contain_text("version 1")

    # Compare-and-swap: with the version just read the write goes through...
    page.click("#kv-use-version")
    expect(page.locator("#kv-cas-kind")).to_have_value("if_version")
    expect(page.locator("#kv-cas-value")).to_have_value("1")
    page.fill("#kv-value", "second value")
    page.click("#kv-put")
    expect(message).to_contain_text("version is now 2")
    # ...and with a stale version the API's 409 is shown as it is.
    page.fill("#kv-cas-value", "1")
    page.fill("#kv-value", "lost update")
    page.click("#kv-put")
    expect(message).to_have_class(re.compile(r"\berror\b"))
    expect(message).to_contain_text("409 compare_failed")
    expect(message).to_contain_text("current version 2")
    status, body = env.api("GET", f"/v1/kv/{prefix}alpha")
    assert status == 200 and body == b"second value", (status, body)
    page.select_option("#kv-cas-kind", "")

    # Bad input is refused in the page, with a message, and nothing breaks.
    page.select_option("#kv-key-enc", "hex")
    page.click("#kv-get")
    expect(message).to_contain_text("not valid hex")
    page.select_option("#kv-key-enc", "text")

    # A binary key and value round-trip through hex.
    page.select_option("#kv-key-enc", "hex")
    page.fill("#kv-key", prefix_hex + "00ff")
    page.select_option("#kv-value-enc", "hex")
    page.fill("#kv-value", "deadbeef00")
    page.click("#kv-put")
    expect(message).to_contain_text("Stored 5 bytes")
    page.click("#kv-get")
    expect(page.locator("#kv-view-enc")).to_have_value("hex")
    expect(page.locator("#kv-view")).to_have_text("deadbeef00")
    page.select_option("#kv-view-enc", "base64")
    expect(page.locator("#kv-view")).to_have_text("3q2+7wA=")

    # The listing shows both keys; the binary one as hex.
    page.fill("#list-prefix", prefix)
    page.click("#list-submit")
    rows = page.locator("#list-table tbody tr")
    expect(rows).to_have_count(2)
    # In byte order: 0x00 sorts before "a".
    expect(rows.nth(0)).to_contain_text(prefix_hex + "00ff")
    expect(rows.nth(0).locator(".tag").first).to_have_text("hex")
    expect(rows.nth(1)).to_contain_text(prefix + "alpha")
    expect(rows.nth(1)).to_contain_text("second value")
    env.screenshot(page, "keys")

    # Clicking a listed key opens it in the editor.
    rows.nth(1).click()
    expect(page.locator("#kv-key")).to_have_value(prefix + "alpha")
    expect(page.locator("#kv-view")).to_have_text("second value")

    page.click("#kv-delete")
    expect(message).to_contain_text("Deleted at revision")
    page.click("#kv-get")
    expect(message).to_contain_text("404 key_not_found")
    page.click("#list-submit")
    expect(rows).to_have_count(1)


def test_key_browser_pages_through_a_long_listing(page, env):
    prefix = f"paged-{env.run}/"
    for i in range(30):
        env.put(f"{prefix}{i:03}", str(i))
    open_view(page, env, "keys")
    page.fill("#list-prefix", prefix)
    page.select_option("#list-limit", "25")
    page.click("#list-submit")
    rows = page.locator("#list-table tbody tr")
    expect(rows).to_have_count(25)
    expect(rows.nth(0)).to_contain_text(prefix + "000")
    expect(page.locator("#list-page")).to_contain_text("more follow")
    page.click("#list-next")
    expect(rows).to_have_count(5)
    expect(rows.nth(0)).to_contain_text(prefix + "025")
    expect(page.locator("#list-next")).to_be_disabled()
    page.click("#list-prev")
    expect(rows).to_have_count(25)
    expect(rows.nth(24)).to_contain_text(prefix + "024")


def test_a_listed_key_with_a_line_break_opens_as_hex(page, env):
    prefix = f"lines-{env.run}/"
    env.put(prefix + "two\nlines", "kept")
    open_view(page, env, "keys")
    page.fill("#list-prefix", prefix)
    page.click("#list-submit")
    rows = page.locator("#list-table tbody tr")
    expect(rows).to_have_count(1)
    key_hex = (prefix + "two\nlines").encode().hex()
    expect(rows.nth(0)).to_contain_text(key_hex)
    # A text field would drop the line break and read another key.
    rows.nth(0).click()
    expect(page.locator("#kv-key-enc")).to_have_value("hex")
    expect(page.locator("#kv-key")).to_have_value(key_hex)
    expect(page.locator("#kv-view")).to_have_text("kept")


def test_watch_shows_changes_live(page, env):
    prefix = f"watched-{env.run}/"
    open_view(page, env, "watch")
    page.fill("#watch-prefix", prefix)
    page.click("#watch-start-btn")
    expect(page.locator("#watch-status")).to_have_text(re.compile("^watching"))
    first = env.put(prefix + "a", "one")["revision"]
    env.put(f"unwatched-{env.run}/b", "two")
    status, _ = env.api("DELETE", f"/v1/kv/{prefix}a")
    assert status == 200
    rows = page.locator("#watch-table tbody tr")
    expect(rows).to_have_count(2)
    # Newest first.
    expect(rows.nth(0)).to_contain_text("delete")
    expect(rows.nth(0)).to_contain_text(prefix + "a")
    expect(rows.nth(1)).to_contain_text("put")
    expect(rows.nth(1)).to_contain_text("one")
    page.click("#watch-stop-btn")
    expect(page.locator("#watch-status")).to_have_text("stopped")
    env.put(prefix + "c", "after stop")
    page.wait_for_timeout(500)
    expect(rows).to_have_count(2)

    # A watch from a past revision replays the history since then.
    page.click("#watch-clear-btn")
    page.fill("#watch-start", str(first))
    page.click("#watch-start-btn")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text(prefix + "c")
    page.click("#watch-stop-btn")

    # A start revision that is not a number is refused in the page.
    page.fill("#watch-start", "abc")
    page.click("#watch-start-btn")
    expect(page.locator("#watch-message")).to_contain_text("whole number")



def test_membership_needs_the_token_and_then_works(page, env):
    name, peer_url = env.joiner
    open_view(page, env, "members")
    expect(page.locator("#members-table tbody tr")).to_have_count(3)
    message = page.locator("#members-message")
    page.fill("#add-name", name)
    page.fill("#add-peer-url", peer_url)
    page.click("#add-submit")
    expect(message).to_contain_text("401 unauthorized")
    expect(message).to_contain_text("cluster token")

    page.fill("#token-input", "not-the-token")
    page.click("#token-save")
    expect(page.locator("#token-state")).to_contain_text("token set")
    page.click("#add-submit")
    expect(message).to_contain_text("401 unauthorized: wrong cluster token")

    page.fill("#token-input", env.token())
    page.click("#token-save")
    page.click("#add-submit")
    expect(message).to_contain_text(f"Added {name} as a learner")
    member = page.locator(f'#members-table tr[data-member="{name}"]')
    expect(member).to_contain_text("learner")

    # The new node needs a moment to catch up; until then the cluster
    # refuses the promotion with 409, which the page shows.
    deadline = time.monotonic() + 20
    while True:
        member.get_by_role("button", name="Promote").click()
        expect(message).not_to_contain_text("\u2026")
        if f"Promote {name}: done" in message.inner_text():
            break
        expect(message).to_contain_text("409 conflict")
        assert time.monotonic() < deadline, message.inner_text()
        page.wait_for_timeout(500)
    expect(member).to_contain_text("voter")
    expect(member.get_by_role("button", name="Promote")).to_have_count(0)

    # Voters answer for themselves: n1 is not a learner.
    voter = page.locator('#members-table tr[data-member="n1"]')
    expect(voter.get_by_role("button", name="Promote")).to_have_count(0)

    remove = member.get_by_role("button", name="Remove")
    remove.click()
    expect(remove).to_have_text(f"Confirm remove {name}")
    remove.click()
    expect(message).to_contain_text(f"Remove {name}: done")
    expect(page.locator(f'#members-table tr[data-member="{name}"]')).to_have_count(0)
    # The token lives in this tab's session storage only.
    assert page.evaluate("sessionStorage.getItem('phxkv.token')") == env.token()
    page.click("#token-clear")
    expect(page.locator("#token-state")).to_have_text("no token")
