#!/usr/bin/env python3
"""Print what ``opencode run --share`` puts on a cloudsession share, with opencode's stock share
client alone and with the cloudsession-share plugin installed, against opencode's own state.

    .venv/bin/python scripts/opencode_run_share.py [--runs 3]

Offline: the real opencode CLI from tests/node (1.18.33) in a sandbox, answered by the fake model
of the test suite (tests/fake_model.py: streamed text, and a bash tool call in the first prompt),
sharing to a real ``cloudsession serve`` on a temporary filesystem store. Each run's share is read
as soon as ``opencode run`` exits, then compared with ``opencode export`` of the session: messages
and parts on the share with the same content as opencode holds, missing ones, ones with other
(older) content, extra ones. Then the same for a session shared mid-way (``opencode run``, then
``opencode run --session <id> --share``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_model import FakeModel  # noqa: E402
from opencode_runs import PROMPTS, compare, install_plugin, run, sandbox_for, share_items  # noqa: E402
from servers import ServerProcess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="run-share-") as tmp:
        root = Path(tmp)
        model = FakeModel().start()
        server = ServerProcess(root / "share-data").start()
        try:
            for mode in ("stock client alone", "with the plugin"):
                sandbox = sandbox_for(root / mode.replace(" ", "-"), server.url, model.url)
                if mode == "with the plugin":
                    install_plugin(sandbox, server.url)
                totals = [0, 0, 0, 0]
                for n in range(args.runs):
                    done = run(sandbox, PROMPTS[n % len(PROMPTS)], "--share")
                    items = share_items(server.url, done.share_id)
                    found = compare(items, sandbox.export(done.session_id))
                    totals = [a + b for a, b in zip(totals, (found.messages_on_share, found.messages, found.parts_on_share, found.parts), strict=True)]
                    print(f"{mode}, run {n + 1}: {found.line()}", flush=True)
                print(f"{mode}, all runs: messages {totals[0]}/{totals[1]}, parts {totals[2]}/{totals[3]}", flush=True)
                first = run(sandbox, PROMPTS[1])
                second = run(sandbox, "one more", "--session", first.session_id, "--share")
                found = compare(share_items(server.url, second.share_id), sandbox.export(first.session_id))
                print(f"{mode}, shared mid-way: {found.line()}", flush=True)
        finally:
            server.stop()
            model.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
