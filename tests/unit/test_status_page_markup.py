"""The status page's markup: every value is escaped exactly once, and the page links every
JSON endpoint of the one endpoint table with its description."""

from __future__ import annotations

import re
import time

import pytest

from mcpserver.status_page import ENDPOINTS, Html, Page, escape, join, markup, render

pytestmark = pytest.mark.unit


def test_markup_escapes_every_value_and_markup_only_once() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    built = markup('<b title="{}">{}</b>{}', hostile, "a & b", Html("<i>ours</i>"))
    assert built == (
        '<b title="&lt;img src=x onerror=&quot;alert(1)&quot;&gt;">a &amp; b</b><i>ours</i>'
    )
    assert isinstance(built, Html)
    assert escape(escape("<")) == "&lt;"  # an escaped value is markup: never escaped again
    assert markup("{}", markup("{}", "<")) == "&lt;"
    assert join(" | ", ["<", Html("<br>"), 3]) == "&lt; | <br> | 3"


def test_the_page_links_each_json_endpoint_of_the_table_with_its_description() -> None:
    now = time.time()
    page = Page("1", now, now, True, "", [], None, None, "", [], [], 0)
    links = re.search(r'<p id="links">\n(.*)\n</p>', render(page))
    assert links
    found = re.findall(r'<a href="([^"]*)" title="([^"]*)">([^<]*)</a>', links.group(1))
    expected = [
        (href, str(escape(endpoint.description)), text)
        for endpoint in ENDPOINTS
        for href, text in endpoint.links
    ]
    assert found == expected
    # every GET endpoint but the page itself and /debug/accepted (a peer's, not a person's)
    linked = {href.partition("?")[0] for href, _, _ in found}
    assert linked == {
        e.path for e in ENDPOINTS if e.method == "GET" and e.path not in ("/", "/debug/accepted")
    }
    assert all(e.description for e in ENDPOINTS)
