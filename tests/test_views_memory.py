"""What the share page keeps in memory: a cached view of a long share holds an outline of each
message, and a request parses only the messages (and parts) it shows, dropping them afterwards;
the page is the same, byte for byte, as one rendered from fully parsed dicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

from factories import settings_for_tests
from view_data import SES, assistant, item, part, rich_items, user

from cloudsession.render import pages as pages_module
from cloudsession.render.pages import PageRenderer, ViewRenderer
from cloudsession.shares.service import ShareService
from cloudsession.store.fs import FilesystemStore


def long_items(turns: int) -> list[dict[str, Any]]:
    items = rich_items()
    for n in range(turns):
        asked = user(100_000 + n * 10, id=f"msg_long{n:05d}u")
        answer = assistant(asked, 100_000 + n * 10 + 5, id=f"msg_long{n:05d}a")
        items += [item("message", asked), item("part", part(asked, "text", text=f"question {n} about {SES}")),
                  item("message", answer), item("part", part(answer, "text", text=f"answer {n}"))]
    return items


async def test_a_page_parses_only_what_it_shows_and_keeps_no_dicts(tmp_path: Path) -> None:
    service = ShareService(FilesystemStore(tmp_path / "store"), settings_for_tests(tmp_path / "data"))
    creds = await service.create(SES, origin="http://share.test")
    await service.sync(creds.id, creds.secret, long_items(300))
    share = await service.public_share(creds.id)
    renderer = ViewRenderer(PageRenderer())

    html = await renderer.run(lambda pages: pages.share_page(share, 3))
    view = await renderer.run(lambda pages: pages.view(share))
    assert view.pages >= 5 and view.loaded == []
    assert share.json is not None  # a service view: entities kept serialised

    # Another page of the cached view: only the messages of that page and of the navigator's
    # window (the pages either side) are parsed, each once, and none stays parsed.
    with mock.patch.object(view, "load", wraps=view.load) as load:
        page4 = await renderer.run(lambda pages: pages.share_page(share, 4))
    loaded = [call.args[0] for call in load.call_args_list]
    assert 0 < len(loaded) == len(set(loaded)) <= 2 * view.page_size
    assert view.loaded == []
    with mock.patch.object(view, "load", wraps=view.load) as load:
        assert await renderer.run(lambda pages: pages.share_page(share, 3)) == html
    assert load.call_count == 0  # everything the page needs of its messages is kept small
    shown = view.page_entries(3)

    # The same page from a share whose dicts are all parsed, in a fresh renderer: same bytes.
    other = await ShareService(FilesystemStore(tmp_path / "store"), service.settings).public_share(creds.id)
    assert other.messages and other.parts  # parsed in full
    assert PageRenderer().share_page(other, 3) == html and PageRenderer().share_page(other, 4) == page4
    # And the other views of the page agree too: search, fragments, locate by part.
    assert PageRenderer().search(other, "question 150") == await renderer.run(lambda pages: pages.search(share, "question 150"))
    ids = [e.id for e in shown[:3]]
    expected = PageRenderer().fragments(other, ids, 3)
    assert await renderer.run(lambda pages: pages.fragments(share, ids, 3)) == expected
    part_id = view.part_pages and next(iter(view.part_pages))
    assert part_id and view.part_pages[part_id] == pages_module.ShareView(other).part_pages[part_id]


async def test_a_new_version_outlines_only_the_entities_its_sync_changed(tmp_path: Path) -> None:
    service = ShareService(FilesystemStore(tmp_path / "store"), settings_for_tests(tmp_path / "data"))
    creds = await service.create(SES, origin="http://share.test")
    await service.sync(creds.id, creds.secret, long_items(120))
    renderer = ViewRenderer(PageRenderer())
    share = await service.public_share(creds.id)
    await renderer.run(lambda pages: pages.share_page(share, 1))
    asked = user(900_000, id="msg_zzlate")
    await service.sync(creds.id, creds.secret, [item("message", asked), item("part", part(asked, "text", text="late"))])
    newer = await service.public_share(creds.id)
    with mock.patch.object(pages_module, "_part_outline", wraps=pages_module._part_outline) as parts, \
         mock.patch.object(pages_module, "_message_outline", wraps=pages_module._message_outline) as messages:
        html = await renderer.run(lambda pages: pages.share_page(newer, 3))
    assert (parts.call_count, messages.call_count) == (1, 1)
    assert "msg_zzlate" in html
    fresh = await ShareService(FilesystemStore(tmp_path / "store"), service.settings).public_share(creds.id)
    assert fresh.messages and PageRenderer().share_page(fresh, 3) == html


_MEASURE_VIEW = r"""
import asyncio, gc, json, sys, tracemalloc
from pathlib import Path
from factories import settings_for_tests
from test_views_memory import long_items
from view_data import SES
from cloudsession.render import pages
from cloudsession.shares.service import ShareService
from cloudsession.store.fs import FilesystemStore

async def main(root):
    service = ShareService(FilesystemStore(root / "store"), settings_for_tests(root / "data"))
    real = SES[:-2] + "00"
    creds = await service.create(real, origin="http://share.test")
    await service.sync(creds.id, creds.secret, [
        {**i, "data": {**i["data"], "sessionID": real} if isinstance(i["data"], dict) and "sessionID" in i["data"] else i["data"]}
        for i in long_items(400)])
    share = await service.public_share(creds.id)
    await service.close()
    pages.ShareView(share)  # one-time work a first view causes (lazy imports, decoded pieces)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    view = pages.ShareView(share)
    gc.collect()
    taken = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(json.dumps([taken, view.approx_bytes]))

asyncio.run(main(Path(sys.argv[1])))
"""


async def test_the_view_cache_counts_what_outlines_cost_and_stays_within_its_budget(tmp_path: Path) -> None:
    service = ShareService(FilesystemStore(tmp_path / "store"), settings_for_tests(tmp_path / "data"))
    shares = []
    for n in range(3):
        real = SES[:-2] + f"{n:02d}"
        creds = await service.create(real, origin="http://share.test")
        await service.sync(creds.id, creds.secret, [
            {**i, "data": {**i["data"], "sessionID": real} if isinstance(i["data"], dict) and "sessionID" in i["data"] else i["data"]}
            for i in long_items(400)])
        shares.append(await service.public_share(creds.id))
    # The estimate is within a factor of what the outlines take, measured with tracemalloc in a
    # fresh interpreter (in a long test run, whatever else the process holds and does moved it).
    view = pages_module.ShareView(shares[0])
    measured = subprocess.run([sys.executable, "-c", _MEASURE_VIEW, str(tmp_path / "measure")], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert measured.returncode == 0, measured.stderr
    taken, approx = json.loads(measured.stdout)
    assert approx == view.approx_bytes  # the same view, built there
    assert taken / 2 <= approx <= taken * 2
    # A budget for two views keeps two (the newest), and always the one just asked for.
    renderer = PageRenderer(view_cache_bytes=2 * view.approx_bytes + 1)
    for share in shares:
        renderer.share_page(share, 1)
    assert renderer.views_bytes <= 2 * view.approx_bytes + 1
    assert [v.share for v in renderer._views.values()] == shares[1:]
    small = PageRenderer(view_cache_bytes=0)
    small.share_page(shares[0], 1)
    assert [v.share for v in small._views.values()] == shares[:1]


def test_fragments_are_counted_as_the_memory_their_strings_take() -> None:
    cache = pages_module._FragmentCache(1_000_000)
    cache.put("a" * 16, "<p>" + "x" * 10_000 + "</p>")
    ascii_cost = cache.nbytes
    cache.put("b" * 16, "<p>" + "😀" * 10_000 + "</p>")  # 4 bytes a character in memory
    assert ascii_cost > 10_000 and cache.nbytes - ascii_cost > 40_000
    for n in range(200):
        cache.put(f"k{n:015d}", "<p>" + "y" * 10_000 + "</p>")
    assert cache.nbytes <= 1_000_000 and cache.get("a" * 16) is None
