"""The API docs page at /docs: rendering and "try it"."""

import re

from playwright.sync_api import expect


def operation(page, method, path):
    anchor = method + "-" + re.sub(r"[^a-z0-9]+", "-", path, flags=re.I)
    op = page.locator(f"details#{anchor}")
    op.locator(":scope > summary").click()
    return op


def test_docs_render_markdown_and_examples(page, env):
    page.goto(env.url("/docs"))
    expect(page.locator("#title")).to_contain_text("phxkv")
    intro = page.locator("main > .desc").first
    # Descriptions are formatted: code spans, not raw backticks.
    expect(intro.locator("code").first).to_have_text("*_utf8")
    assert "`" not in intro.inner_text()
    # Four paragraphs: encodings, revisions, errors, authentication.
    expect(intro.locator("p")).to_have_count(4)

    # Schemas without an example of their own get a generated one.
    schema = page.locator("details#schema-ListResponse")
    schema.locator(":scope > summary").click()
    expect(schema).to_contain_text("Example (generated from the schema):")
    expect(schema.locator("pre")).to_contain_text('"next_after": "aGVsbG8="')

    # A JSON request body starts from the document's example.
    txn = operation(page, "post", "/v1/txn")
    body = txn.locator(".try textarea")
    expect(body).to_have_value(re.compile(r'"compare"'))


def test_docs_try_it_sends_requests_and_shows_answers(page, env):
    prefix = f"docs-{env.run}/"
    page.goto(env.url("/docs"))
    put = operation(page, "put", "/v1/kv/{key}")
    put.get_by_label("key", exact=True).fill(prefix + "try it")
    put.locator(".try textarea").fill("from the docs page")
    put.locator(".try button.send").click()
    result = put.locator(".try .result")
    expect(result.locator(".status")).to_contain_text("200")
    expect(result.locator("pre.response")).to_contain_text('"version": 1')
    status, _ = env.api("GET", f"/v1/kv/{prefix}try%20it")
    assert status == 200

    get = operation(page, "get", "/v1/kv/{key}")
    get.get_by_label("key", exact=True).fill(prefix + "try it")
    get.locator(".try button.send").click()
    result = get.locator(".try .result")
    expect(result.locator(".status")).to_contain_text("200")
    expect(result.locator("pre.headers")).to_contain_text("x-phxkv-version: 1")
    expect(result.locator("pre.response")).to_have_text("from the docs page")
    get.locator(".try").scroll_into_view_if_needed()
    env.screenshot(page, "docs")

    # An API error is shown with its code.
    get.get_by_label("key", exact=True).fill(prefix + "missing")
    get.locator(".try button.send").click()
    expect(result.locator(".status")).to_contain_text("404")
    expect(result).to_contain_text("key_not_found: no such key")

    # Query parameters reach the server (and a bad one is refused plainly).
    listing = operation(page, "get", "/v1/kv")
    listing.get_by_label("prefix", exact=True).fill(prefix)
    listing.get_by_label("limit", exact=True).fill("0")
    listing.locator(".try button.send").click()
    result = listing.locator(".try .result")
    expect(result.locator(".status")).to_contain_text("400")
    expect(result).to_contain_text("invalid_argument")
    listing.get_by_label("limit", exact=True).fill("5")
    listing.locator(".try button.send").click()
    expect(result.locator(".status")).to_contain_text("200")
    expect(result.locator("pre.response")).to_contain_text(f'"key_utf8": "{prefix}try it"')

    # A watch streams until stopped.
    watch = operation(page, "get", "/v1/watch")
    watch.get_by_label("prefix", exact=True).fill(prefix)
    watch.locator(".try button.send").click()
    result = watch.locator(".try .result")
    expect(result.locator(".status")).to_contain_text("200")
    env.put(prefix + "streamed", "live")
    expect(result.locator("pre.response")).to_contain_text("event: put")
    expect(result.locator("pre.response")).to_contain_text(prefix + "streamed")
    watch.get_by_role("button", name="Stop").click()
    expect(result).to_contain_text("Stopped.")

    # Invalid JSON in a body is caught before sending.
    txn = operation(page, "post", "/v1/txn")
    txn.locator(".try textarea").fill("{not json")
    txn.locator(".try button.send").click()
    expect(txn.locator(".try .result")).to_contain_text("not valid JSON")
