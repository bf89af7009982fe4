"""HTML tests of the share page: every part type, tool and tool state, the header, the diff panel,
ordering, anchors, pagination and the waiting state, rendered from PublicShare objects (the real
client's share and synthetic ones) and checked with CSS selectors on the parsed HTML."""

from __future__ import annotations

import re

import pytest
from bs4 import BeautifulSoup, Tag
from view_data import ROOT, assistant, fold, item, part, real_share, rich_items, session, tool, user

from cloudsession.render.pages import PageRenderer

QUIET = {"step-start", "step-finish", "snapshot", "patch"}


@pytest.fixture(scope="module")
def renderer() -> PageRenderer:
    return PageRenderer()


@pytest.fixture(scope="module")
def rich_data() -> list[dict]:
    return rich_items()


@pytest.fixture(scope="module")
def rich(renderer: PageRenderer, rich_data: list[dict]) -> BeautifulSoup:
    return BeautifulSoup(renderer.share_page(fold(rich_data), 1), "html.parser")


def text(node: Tag | None) -> str:
    assert node is not None
    return " ".join(node.get_text(" ").split())


def tool_section(soup: BeautifulSoup, name: str, status: str = "completed") -> Tag:
    found = soup.select(f"section.tool.tool-{name}.status-{status}")
    assert found, f"no {name} tool in state {status}"
    return found[0]


# --------------------------------------------------------------------------- the real client's share


def test_real_share_renders_every_message_and_part(renderer: PageRenderer) -> None:
    share = real_share()
    soup = BeautifulSoup(renderer.share_page(share, 1), "html.parser")
    articles = soup.select("#messages > article.message")
    assert [a["id"] for a in articles] == [
        "msg-" + m["id"] for m in sorted(share.messages, key=lambda m: m["time"]["created"])
    ]
    # Every part opencode shows gets a section; step and patch bookkeeping does not.
    shown = [p for p in share.parts if p["type"] not in QUIET and not (p["type"] == "text" and (p.get("synthetic") or not p["text"].strip()))]
    assert len(soup.select("section.part")) == len(shown) == 5
    assert text(soup.select_one("h1")) == "Hello from the stub model. (title)"
    header = text(soup.select_one("#share-header"))
    assert "/home/devel/sandbox-serve/proj" in header and "5 messages" in header and "12 parts" in header
    assert "54 tokens" in header and "4 syncs" in header and "Stub Model (stub/stub-model)" in header
    write = tool_section(soup, "write")
    assert text(write.select_one(".tool-title")) == "hello.txt"
    assert "hello from stub" in text(write.select_one("pre.file-content"))
    assert [text(s) for s in soup.select(".turn-footer .tokens")] == ["11 in · 7 out"] * 3
    assert soup.select(".part-patch, .part-step-start, .part-step-finish, .part-snapshot") == []
    assert soup.select_one('meta[name="robots"]')["content"].startswith("noindex")


# --------------------------------------------------------------------------- header, order, anchors


def test_header_sums_cost_tokens_and_lists_models(rich: BeautifulSoup) -> None:
    header = text(rich.select_one("#share-header"))
    assert "Add a greeting module" in header
    assert ROOT in header
    assert "6 messages" in header
    assert "$0.13" in header  # three assistant messages at $0.0421, in dollars and cents
    assert "4,620 tokens" in header  # (1,200 in + 340 out) x 3
    assert "Claude Sonnet 4 (anthropic/claude-sonnet-4)" in header
    # Times in UTC with the year until the page script localises them; "1 sync", not "1 syncs".
    assert re.search(r"Created \w{3} \d+, \d{4}, \d\d:\d\d:\d\d UTC · Updated .* UTC · 1 sync Changes", header)
    # The Changes panel is reachable from the header.
    link = rich.select_one("#share-header a.changes-link")
    assert link["href"] == "#diffs" and text(link) == "Changes: 2 files"


def test_messages_have_role_time_model_and_anchor(rich: BeautifulSoup) -> None:
    articles = rich.select("#messages > article.message")
    assert [a["class"][1] for a in articles] == ["user", "assistant"] * 3
    numbers = [int(a["data-n"]) for a in articles]
    assert numbers == sorted(numbers)
    first_assistant = articles[1]
    assert text(first_assistant.select_one(".model")) == "claude-sonnet-4 · anthropic"
    assert first_assistant.select_one("time")["datetime"].endswith("Z")
    anchor = first_assistant.select_one("a.anchor")
    assert anchor["href"] == "#" + first_assistant["id"]
    assert all(a.get("data-hash") for a in articles)


def test_numbers_follow_a_message_inserted_before_others(renderer: PageRenderer) -> None:
    # A message synced late with an earlier time shifts the numbers of those after it; their
    # cached fragments (same content) must not keep the old numbers.
    first = user(1_000)
    later = user(9_000)
    items = [item("session", session()), item("message", first), item("message", later)]
    renderer.share_page(fold(items), 1)
    inserted = user(5_000)
    soup = BeautifulSoup(renderer.share_page(fold([*items, item("message", inserted)], sync_count=2), 1), "html.parser")
    articles = soup.select("#messages > article.message")
    assert [(a["id"], a["data-n"], text(a.select_one("a.anchor"))) for a in articles] == [
        (f"msg-{first['id']}", "1", "#1"),
        (f"msg-{inserted['id']}", "2", "#2"),
        (f"msg-{later['id']}", "3", "#3"),
    ]


def test_every_shown_part_gets_a_section(rich: BeautifulSoup, rich_data: list[dict]) -> None:
    parts = [i["data"] for i in rich_data if i["type"] == "part"]
    shown = [p for p in parts if p["type"] not in QUIET and not p.get("synthetic")]
    sections = rich.select("section.part")
    assert len(sections) == len(shown) == len(parts) - 5  # four bookkeeping parts, one synthetic text
    assert {s["id"] for s in sections} == {"part-" + p["id"] for p in shown}


# --------------------------------------------------------------------------- part types


def test_text_part_is_rendered_markdown(rich: BeautifulSoup) -> None:
    content = rich.select("section.part-text .text-content")[1]
    assert text(content.select_one("h2")) == "Plan"
    assert [text(li) for li in content.select("ol li")] == ["write tests", "run pytest"]
    assert content.select_one("pre.code.hl span.k") is not None  # Pygments-highlighted python
    assert text(content.select_one("table td")) == "greet.py"
    link = content.select_one('a[href="https://docs.python.org/3/"]')
    assert link is not None and "nofollow" in link["rel"]
    assert text(content.select_one("s")) == "maybe"


def test_synthetic_and_empty_text_is_hidden(renderer: PageRenderer, rich: BeautifulSoup) -> None:
    assert rich.select("section.part-text.synthetic") == []
    assert "Summarise and stop." not in rich.get_text()  # the synthetic text of the third prompt
    u = user(1000)
    a = assistant(u, 2000)
    share = fold([
        item("session", session()), item("message", u), item("message", a),
        item("part", part(u, "text", text="shown")), item("part", part(a, "text", text="  \n ")),
        item("part", part(a, "reasoning", text="")), item("part", part(a, "text", text="also shown")),
    ])
    soup = BeautifulSoup(renderer.share_page(share, 1), "html.parser")
    assert [text(s) for s in soup.select("section.part")] == ["shown", "also shown"]


def test_reasoning_is_collapsed(rich: BeautifulSoup) -> None:
    details = rich.select_one("section.part-reasoning details.reasoning")
    assert not details.has_attr("open")
    # 800 ms of thinking: opencode shows durations over 2 s only.
    assert text(details.select_one("summary")) == "Thinking"
    assert text(details.select_one("strong")) == "greet"


def test_file_parts_show_images_inline_and_text_content(rich: BeautifulSoup) -> None:
    files = rich.select("section.part-file")
    image = files[0].select_one("img.inline-image")
    assert image["src"].startswith("data:image/png;base64,")
    assert image["alt"] == "screen.png"
    assert "remember: be polite" in text(files[1].select_one("pre"))
    assert "from notes.txt" in text(files[1])


def test_step_parts_fold_into_a_quiet_turn_footer(rich: BeautifulSoup) -> None:
    # opencode hides step-start, step-finish, snapshot and patch parts; their figures go into
    # one footer per assistant message: tokens, cost, and the duration when over 2 s.
    assert rich.select(".part-step-start, .part-step-finish, .part-snapshot, .part-patch") == []
    page = text(rich.select_one("#messages"))
    assert "@4b825dc6" not in page and "@5c36d82d" not in page and "Files changed (2)" not in page
    footers = rich.select("article.assistant > footer.turn-footer")
    assert len(footers) == 3 and rich.select("article.user footer") == []
    first = footers[0]
    assert text(first.select_one(".tokens")) == "1,200 in · 340 out · 80 reasoning · 4,000 cached"
    assert "cache write 0" in first.select_one(".tokens")["title"]
    assert text(first.select_one(".cost")) == "$0.04"
    assert text(first.select_one(".duration")) == "4.2s"
    header = rich.select_one("article.assistant .message-header")
    assert header.select(".cost, .duration") == []  # the header stays quiet


def test_short_durations_are_hidden(renderer: PageRenderer) -> None:
    u = user(1000)
    quick = assistant(u, 2000, time={"created": 1_795_236_002_000, "completed": 1_795_236_003_500})
    slow = assistant(u, 9000, time={"created": 1_795_236_009_000, "completed": 1_795_236_011_500})
    share = fold([item("session", session()), item("message", u), item("message", quick), item("message", slow)])
    soup = BeautifulSoup(renderer.share_page(share, 1), "html.parser")
    assert [text(f.select_one(".duration")) if f.select_one(".duration") else "" for f in soup.select("footer.turn-footer")] == ["", "2.5s"]


def test_agent_parts(rich: BeautifulSoup) -> None:
    assert "@build" in text(rich.select_one("section.part-agent"))


def test_subtask_retry_compaction_and_unknown_parts(rich: BeautifulSoup) -> None:
    subtask = rich.select_one("section.part-subtask")
    assert "Edge-case review" in text(subtask) and "general" in text(subtask)
    assert "anthropic/claude-haiku" in text(subtask) and "/review" in text(subtask)
    assert text(subtask.select_one("details.prompt strong")) == "greet.py"
    retry = text(rich.select_one("section.part-retry"))
    assert "retry #1" in retry and "Overloaded" in retry and "HTTP 529" in retry
    assert text(rich.select_one("section.part-compaction")) == "Context compacted (automatic, after overflow)"
    unknown = rich.select_one("section.part-x-future-part details.unknown")
    assert text(unknown.select_one("summary")) == "x-future-part"
    assert "a part type this server does not know" in text(unknown)


# --------------------------------------------------------------------------- tools


def test_bash_shows_command_and_collapsed_long_output(rich: BeautifulSoup) -> None:
    bash = tool_section(rich, "bash")
    assert text(bash.select_one(".tool-title")) == "Run the tests"
    assert text(bash.select_one("pre.command")) == "pytest -q test_greet.py"  # the "$ " is drawn by CSS
    head = text(bash.select_one("pre.output"))
    assert "line 1:" in head and "line 60:" not in head
    more = bash.select_one("details.more")
    assert text(more.select_one("summary")) == "show more (48 more lines)"
    assert "line 60:" in text(more)
    assert bash.select_one(".duration") is None  # 850 ms: shown only over 2 s


def test_edit_shows_a_diff(rich: BeautifulSoup) -> None:
    edit = tool_section(rich, "edit")
    assert text(edit.select_one(".tool-title")) == "greet.py"
    # Cells hold highlighted tokens now: read their text as written, spaces collapsed.
    added = [" ".join(r.select_one(".dc").get_text().split()) for r in edit.select("tr.d-add")]
    removed = [" ".join(r.select_one(".dc").get_text().split()) for r in edit.select("tr.d-del")]
    assert added == ['"""Greet someone politely."""', 'return f"Hello, {name}!"']  # the signs are drawn by CSS
    assert removed == ["return 'hi ' + name"]
    assert [text(td) for td in edit.select("tr.d-add")[0].select("td.ln")] == ["", "2"]
    assert "Edit applied successfully." not in text(edit)


def test_write_shows_the_file_highlighted_by_extension(rich: BeautifulSoup) -> None:
    write = tool_section(rich, "write")
    code = write.select_one("pre.file-content")
    assert code.select_one("span.k") is not None  # "def" as a Python keyword
    assert 'assert greet("Ada") == "Hello, Ada!"' in code.get_text()


@pytest.mark.parametrize(
    ("name", "summary", "inside"),
    [
        ("read", "greet.py", "def greet(name):"),
        ("grep", "def greet in . (*.py) 1 matches", "Line 1: def greet(name):"),
        ("glob", "**/*.py in . 2 files", "/home/dev/proj/test_greet.py"),
        ("list", ". 2 entries", "README.md"),
    ],
)
def test_search_tools_show_a_summary_and_collapsed_output(rich: BeautifulSoup, name: str, summary: str, inside: str) -> None:
    section = tool_section(rich, name)
    title = text(section.select_one(".tool-title")).replace(ROOT, ".")
    assert title == summary
    output = section.select_one("details.tool-output")
    assert not output.has_attr("open")
    assert inside in output.get_text()


def test_webfetch_links_the_url_and_collapses_the_content(rich: BeautifulSoup) -> None:
    fetch = tool_section(rich, "webfetch")
    link = fetch.select_one('a[href="https://peps.python.org/pep-0008/"]')
    assert link is not None and "noopener" in link["rel"]
    assert "markdown" in text(fetch.select_one("p.meta"))
    assert "Style Guide" in text(fetch.select_one("details.tool-output"))


def test_todowrite_is_a_checklist(rich: BeautifulSoup) -> None:
    items = tool_section(rich, "todowrite").select("ul.todos li")
    assert [(li["class"][1], text(li.select_one(".todo-text"))) for li in items] == [
        ("completed", "Create greet.py"),
        ("in_progress", "Write tests"),
        ("pending", "Update README"),
        ("cancelled", "Publish to PyPI"),
    ]
    assert [text(li.select_one(".check")) for li in items] == ["☑", "◐", "☐", "☒"]


def test_task_shows_prompt_steps_and_result(rich: BeautifulSoup) -> None:
    task = tool_section(rich, "task")
    assert "Review the change" in text(task.select_one(".tool-title"))
    assert text(task.select_one(".tool-title .badge")) == "general"
    assert text(task.select_one("details.prompt strong")) == "greet.py"
    assert "read greet.py completed" in text(task.select_one("details.task-steps"))
    assert "add a docstring" in text(task.select_one(".task-result"))


def test_question_shows_options_and_the_answer(rich: BeautifulSoup) -> None:
    question = tool_section(rich, "question")
    assert "Which greeting style?" in text(question)
    assert text(question.select_one("li.chosen")).startswith("● Casual")
    assert len(question.select("ul.options li")) == 2


def test_unknown_tool_shows_input_and_output(rich: BeautifulSoup) -> None:
    generic = tool_section(rich, "github_create_issue")
    assert text(generic.select_one(".tool-title")) == "Created issue #7"
    assert '"repo": "dev/proj"' in generic.select_one("details.tool-input").get_text()
    assert '{"number": 7}' in generic.select_one("details.tool-output").get_text()


@pytest.mark.parametrize(
    ("name", "status", "shown"),
    [
        ("bash", "pending", "pending"),
        ("bash", "running", "running"),
        ("bash", "error", "cat: missing.txt: No such file or directory"),
        ("write", "aborted", "Tool execution aborted"),
    ],
)
def test_tool_states_are_visible(rich: BeautifulSoup, name: str, status: str, shown: str) -> None:
    section = tool_section(rich, name, status)
    assert text(section.select_one(".tool-status")) == status
    assert shown in text(section)


def test_message_errors_are_shown(rich: BeautifulSoup) -> None:
    errors = [" ".join(e.get_text().split()) for e in rich.select(".message-error")]
    assert errors == ["APIError: Overloaded (HTTP 529)", "Aborted: The operation was aborted."]


# --------------------------------------------------------------------------- diffs


def test_session_diff_panel_shows_each_file(rich: BeautifulSoup) -> None:
    panel = rich.select_one("#diffs")
    assert not panel.has_attr("hidden")
    assert "2 files · +11 −1" in text(panel.select_one("h2"))
    files = panel.select("details.file-diff")
    assert [text(f.select_one(".path")) for f in files] == ["greet.py", "test_greet.py"]
    assert text(files[0].select_one(".badge")) == "modified"
    # The legacy {before, after} shape gets a computed unified diff.
    assert len(files[1].select("tr.d-add")) == 9


def test_changes_panel_lists_the_files_with_counts_linking_to_each_diff(rich: BeautifulSoup) -> None:
    entries = rich.select("#diffs ol#diff-files > li")
    assert [text(li) for li in entries] == ["greet.py modified +2 −1", "test_greet.py +9 −0"]
    targets = [li.select_one("a")["href"] for li in entries]
    assert targets == ["#diff-1", "#diff-2"]
    for target, name in zip(targets, ("greet.py", "test_greet.py"), strict=True):
        block = rich.select_one(target)
        assert block.name == "details" and text(block.select_one(".path")) == name


def test_turn_diffs_on_user_messages(rich: BeautifulSoup) -> None:
    turn = rich.select_one("details.turn-diffs")
    assert "Files changed in this turn (1)" in text(turn.select_one("summary"))
    assert turn.select("tr.d-add")


# --------------------------------------------------------------------------- states and pagination


def test_share_without_messages_is_waiting_for_first_sync(renderer: PageRenderer) -> None:
    soup = BeautifulSoup(renderer.share_page(fold([item("session", session())]), 1), "html.parser")
    assert "Waiting for the first sync" in text(soup.select_one("#waiting"))
    assert soup.select("#messages article") == []


def _long_share(count: int):
    items = [item("session", session())]
    for n in range(count):
        message = user(n * 1000) if n % 2 == 0 else assistant({"id": "msg_parent"}, n * 1000)
        items += [item("message", message), item("part", part(message, "text", text=f"message number {n + 1}"))]
    return fold(items)


def test_pagination_keeps_anchors_working(renderer: PageRenderer) -> None:
    share = _long_share(250)
    first = BeautifulSoup(renderer.share_page(share, 1), "html.parser")
    assert len(first.select("#messages article")) == 100
    # The navigator lists the messages of this page and the next; page 3 is a link.
    nav = first.select("#nav-list li[data-id]")
    assert len(nav) == 100  # the prompts of this page and the next (every other message)
    target = nav[75]
    link = target.select_one("a")["href"]
    assert link == f"?page=2#msg-{target['data-id']}"
    [more] = first.select("#nav-list li.nav-more")
    assert (more["data-from"], more["data-to"], more.select_one("a")["href"]) == ("3", "3", "?page=3")
    assert text(more) == "Page 3 · 25 prompts"
    third = BeautifulSoup(renderer.share_page(share, 3), "html.parser")
    assert third.select_one(f"#msg-{share.messages[230]['id']}") is not None
    assert len(third.select("#messages article")) == 50
    assert "messages 201–250 of 250" in text(third.select_one("nav.pager"))
    assert [li["data-p"] for li in third.select("#nav-list li[data-id]")] == ["2"] * 50 + ["3"] * 25
    assert text(third.select_one("#nav-list li.nav-more")) == "Page 1 · 50 prompts"
    # Past the end is clamped to the last page, not an error.
    assert BeautifulSoup(renderer.share_page(share, 99), "html.parser").select_one("body")["data-page"] == "3"


def test_messages_without_time_go_last_and_parts_without_message_are_skipped(renderer: PageRenderer) -> None:
    timeless = user(0)
    del timeless["time"]
    early = user(5)
    orphan = {"id": "prt_orphan", "sessionID": "s", "messageID": "msg_missing", "type": "text", "text": "ORPHAN"}
    share = fold([item("session", session()), item("message", timeless), item("message", early), item("part", orphan)])
    soup = BeautifulSoup(renderer.share_page(share, 1), "html.parser")
    assert [a["id"] for a in soup.select("#messages article")] == ["msg-" + early["id"], "msg-" + timeless["id"]]
    assert "ORPHAN" not in soup.get_text()


def test_fragment_cache_reuses_unchanged_messages_and_rerenders_changed_ones(renderer: PageRenderer) -> None:
    items = rich_items()
    first = renderer.view(fold(items, sync_count=1))
    changed_items = [dict(i) for i in items]
    target = next(i for i in changed_items if i["type"] == "part" and i["data"]["type"] == "text")
    target["data"] = {**target["data"], "text": "edited text"}
    second = renderer.view(fold(changed_items, sync_count=2))
    changed = {e.id for e in second.entries if e.hash != first.by_id[e.id].hash}
    assert changed == {target["data"]["messageID"]}
    assert "edited text" in renderer.message_html(second.by_id[target["data"]["messageID"]])


# --------------------------------------------------------------------------- what opencode hides


def _nav_pages(soup: BeautifulSoup) -> list[int]:
    """Every page the navigator stands for, inline or as a link, in order."""
    pages: list[int] = []
    for li in soup.select("#nav-list > li"):
        if "nav-more" in li["class"]:
            pages += range(int(li["data-from"]), int(li["data-to"]) + 1)
        elif not pages or pages[-1] != int(li["data-p"]):
            pages.append(int(li["data-p"]))
    return pages


def test_navigator_weight_does_not_grow_with_the_share(renderer: PageRenderer) -> None:
    weights = {}
    for count in (600, 6000):
        share = _long_share(count)
        pages = count // 100
        for page in (1, pages // 2, pages):
            soup = BeautifulSoup(renderer.share_page(share, page), "html.parser")
            nav = soup.select_one("#nav-list")
            # Every page is reachable from the navigator exactly once, whatever page this is.
            assert _nav_pages(soup) == list(range(1, pages + 1))
            inline = {int(li["data-p"]) for li in nav.select("li[data-id]")}
            assert inline == set(range(max(1, page - 1), min(pages, page + 1) + 1))
            assert len(nav.select("li.nav-more")) <= 16
            weights[(count, page)] = len(str(nav))
            # Without JavaScript a link opens the first page it stands for.
            for more in nav.select("li.nav-more"):
                assert more.select_one("a")["href"] == f"?page={more['data-from']}"
        assert text(nav.select_one("#nav-list li.nav-more")).endswith(" prompts")
    # Ten times the messages, about the same navigator (a few more page links and digits).
    assert weights[(6000, 30)] < 1.1 * weights[(600, 3)]
    assert weights[(6000, 1)] < 1.1 * weights[(600, 1)]


def test_navigator_pages_on_demand_come_a_few_at_a_time(renderer: PageRenderer) -> None:
    share = _long_share(1000)
    view = renderer.view(share)
    soup = BeautifulSoup(renderer.nav_pages_html(view, 4, 9, current_page=1), "html.parser")
    assert [li["data-p"] for li in soup.select("li[data-id]")] == ["4"] * 50 + ["5"] * 50 + ["6"] * 50
    [rest] = soup.select("li.nav-more")
    assert (rest["data-from"], rest["data-to"]) == ("7", "9") and text(rest) == "Pages 7–9 · 150 prompts"
    # Out-of-range requests are clamped, never an error.
    assert len(BeautifulSoup(renderer.nav_pages_html(view, 50, 99, current_page=1), "html.parser").select("li[data-id]")) == 50


def test_reverted_messages_are_hidden_with_a_note(renderer: PageRenderer) -> None:
    items = [item("session", session())]
    messages = []
    for n in range(6):
        message = user(n * 1000) if n % 2 == 0 else assistant(messages[-1], n * 1000)
        messages.append(message)
        items += [item("message", message), item("part", part(message, "text", text=f"message {n + 1}"))]
    reverted = fold([*items, item("session", session(revert={"messageID": messages[3]["id"], "snapshot": "abc"}))])
    soup = BeautifulSoup(renderer.share_page(reverted, 1), "html.parser")
    assert [a["id"] for a in soup.select("#messages > article")] == [f"msg-{m['id']}" for m in messages[:3]]
    assert [li["data-id"] for li in soup.select("#nav-list li")] == [messages[0]["id"], messages[2]["id"]]
    assert text(soup.select_one("#reverted-note")) == "3 messages after a revert are hidden, as in opencode."
    assert "3 messages" in text(soup.select_one(".count-messages"))
    assert "message 4" not in soup.get_text()
    # A revert that names no known message hides nothing; without a revert there is no note.
    for session_data in (session(revert={"messageID": "msg_unknown"}), session()):
        soup = BeautifulSoup(renderer.share_page(fold([*items, item("session", session_data)]), 1), "html.parser")
        assert len(soup.select("#messages > article")) == 6 and soup.select_one("#reverted-note") is None


def test_pending_tools_show_as_pending_without_noise(rich: BeautifulSoup) -> None:
    pending = tool_section(rich, "bash", "pending")
    assert text(pending.select_one(".tool-status")) == "pending"
    assert pending.select("pre, details, .tool-error, .note") == []
    assert text(pending) == "bash pending"


def test_open_graph_and_twitter_card_tags(rich: BeautifulSoup) -> None:
    def meta(key: str) -> str:
        tag = rich.select_one(f'meta[property="{key}"]') or rich.select_one(f'meta[name="{key}"]')
        assert tag is not None, key
        return tag["content"]

    assert meta("og:title") == meta("twitter:title") == "Add a greeting module"
    assert meta("og:type") == "article" and meta("twitter:card") == "summary"
    description = meta("og:description")
    assert description == meta("twitter:description") == meta("description")
    assert description.startswith("3 prompts · 6 messages · 2 files changed · Claude Sonnet 4 (anthropic/claude-sonnet-4) · $0.13. ")
    assert description.endswith("Add a greeting module with tests, please. Here is a screenshot:")
    assert meta("twitter:data1") == "Claude Sonnet 4 (anthropic/claude-sonnet-4)" and meta("twitter:data2") == "6"


def test_navigator_lists_the_prompts_as_plain_text(renderer: PageRenderer) -> None:
    u1 = user(1000)
    a1 = assistant(u1, 2000)
    u2 = user(3000)
    share = fold([
        item("session", session()), item("message", u1), item("message", a1), item("message", u2),
        item("part", part(u1, "text", text="## Step 0: what I **changed**\n\n- `one` and [two](https://x.y)")),
        item("part", part(a1, "text", text="the answer")),
        item("part", part(u2, "text", text="injected by opencode", synthetic=True)),
        item("part", part(u2, "text", text="> quoted *words*")),
    ])
    soup = BeautifulSoup(renderer.share_page(share, 1), "html.parser")
    items = soup.select("#nav-list li")
    assert [li["data-id"] for li in items] == [u1["id"], u2["id"]]  # the prompts only
    assert [text(li) for li in items] == ["Step 0: what I changed one and two", "quoted words"]
    assert [li.select_one("a")["data-n"] for li in items] == ["1", "3"]
    assert all(li["data-p"] == "1" and "nav-user" in li["class"] for li in items)


# --------------------------------------------------------------------------- code review


def test_read_output_is_highlighted_with_its_line_numbers(rich: BeautifulSoup, renderer: PageRenderer) -> None:
    read = tool_section(rich, "read")
    code = read.select_one("details.tool-output pre.numbered")
    assert [ln["data-n"] for ln in code.select(".ln")] == ["1", "2"]
    assert code.select_one("span.k") is not None  # python, from the file name
    assert "00001|" not in code.get_text() and "<file>" not in code.get_text()
    assert text(read.select_one("details.tool-output summary")) == "2 lines"
    # Without a numbered output (compacted, say), metadata.preview is shown, numbered from the offset.
    u = user(1000)
    a = assistant(u, 2000)
    preview = tool(a, "read", "completed", {"filePath": f"{ROOT}/app.py", "offset": 40}, title="app.py", output="",
                   metadata={"preview": "import os\nprint(os.getcwd())"})
    soup = BeautifulSoup(renderer.share_page(fold([item("session", session()), item("message", u), item("message", a), item("part", preview)]), 1), "html.parser")
    lines = soup.select("section.tool-read pre.numbered .ln")
    assert [ln["data-n"] for ln in lines] == ["41", "42"]
    assert "print(os.getcwd())" in soup.select_one("section.tool-read pre.numbered").get_text()


def test_diffs_are_highlighted_by_file_type_with_within_line_changes(rich: BeautifulSoup) -> None:
    edit = tool_section(rich, "edit")
    table = edit.select_one("table.diff")
    assert table.select_one("tr.d-ctx span.k") is not None  # "def" in greet.py
    removed = edit.select_one("tr.d-del td.dc")
    added = edit.select("tr.d-add td.dc")
    # "    return 'hi ' + name" became "    \"\"\"Greet someone politely.\"\"\"": too different to mark;
    # the second added line is unpaired. The legacy panel diff of a new file has no pairs either.
    assert not removed.has_attr("data-ch") and not any(a.has_attr("data-ch") for a in added)


def test_within_line_changes_name_the_changed_characters() -> None:
    from cloudsession.render import html as render

    fd = render.file_diff({"file": "a.py", "patch": "@@ -1,2 +1,2 @@\n-total = price * 2\n+total = price * 3\n keep = 1\n"})
    rows = render.diff_rows(fd)
    assert [(r.kind, r.marks) for r in rows] == [("hunk", ""), ("del", "16-17"), ("add", "16-17"), ("ctx", "")]
    assert 'total <span class="o">=</span>' in str(rows[1].html)
    plain = render.diff_rows(render.file_diff({"file": "notes.unknownext", "patch": "@@ -1 +1 @@\n-<b>\n+<i>\n"}))
    assert [str(r.html) for r in plain] == ["@@ -1 +1 @@", "&lt;b&gt;", "&lt;i&gt;"]


def test_lsp_diagnostics_show_under_edit_and_write(renderer: PageRenderer) -> None:
    u = user(1000)
    a = assistant(u, 2000)
    path = f"{ROOT}/app.py"
    diags = {path: [
        {"range": {"start": {"line": 9, "character": 4}, "end": {"line": 9, "character": 8}}, "message": "Unused variable", "severity": 2},
        {"range": {"start": {"line": 2, "character": 0}, "end": {"line": 2, "character": 3}}, "message": "Name 'foo' is not defined", "severity": 1},
    ], f"{ROOT}/other.py": [{"range": {"start": {"line": 0, "character": 0}}, "message": "elsewhere", "severity": 1}]}
    edit = tool(a, "edit", "completed", {"filePath": path, "oldString": "a", "newString": "b"}, title="app.py",
                output="Edit applied successfully.", metadata={"diagnostics": diags})
    write = tool(a, "write", "completed", {"filePath": path, "content": "x = 1\n"}, title="app.py",
                 output="Wrote file successfully.", metadata={"diagnostics": diags})
    share = fold([item("session", session()), item("message", u), item("message", a), item("part", edit), item("part", write)])
    soup = BeautifulSoup(renderer.share_page(share, 1), "html.parser")
    for name in ("edit", "write"):
        found = [text(li) for li in tool_section(soup, name).select("ul.diagnostics li")]
        assert found == ["error 3:1 Name 'foo' is not defined", "warning 10:5 Unused variable"]


def test_completed_tools_carry_no_status_badge(rich: BeautifulSoup) -> None:
    # The normal case says nothing; only pending, running, failed and aborted tools are marked.
    assert tool_section(rich, "bash").select(".tool-status") == []
    assert {text(s) for s in rich.select(".tool-header .tool-status")} == {"pending", "running", "error", "aborted"}
