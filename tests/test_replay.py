"""Replay the real opencode 1.18.33 client's captured traffic and compare the /data payload with
what the real client's own share server returned for it (apart from the public session ID)."""

from __future__ import annotations

import factories as f

RECORDED_ID = "D0r58s46"
RECORDED_SECRET = "c710f211-4932-4b1e-98a9-230386fd057e"


def merge_key(item):
    data = item["data"]
    if item["type"] == "message":
        return f"message/{data['id']}"
    if item["type"] == "part":
        return f"part/{data['messageID']}/{data['id']}"
    return item["type"]


async def replay(client, records):
    create = records[0]
    resp = await client.post(create["path"], json=create["body"], headers={"user-agent": create["headers"]["user-agent"]})
    share = await resp.json()
    for record in records[1:]:
        if record["method"] != "POST":
            continue
        body = dict(record["body"], secret=share["secret"])
        resp = await client.post(record["path"].replace(RECORDED_ID, share["id"]), json=body)
        assert resp.status < 400, await resp.text()
    return share


async def test_replay_matches_real_share_data(client):
    records = f.load_fixture("real-client-sync-requests.json")
    expected = f.load_fixture("real-share-data.json")
    share = await replay(client, records[:5])
    assert share["id"] == RECORDED_ID
    got = await (await client.get(f"/api/share/{share['id']}/data")).json()
    public_id = got[0]["data"]["id"]
    real_id = records[0]["body"]["sessionID"]

    def normalise(item):
        text = f.json.dumps(item, sort_keys=True).replace(real_id, public_id)
        return f.json.loads(text)

    assert {merge_key(i): i for i in got} == {merge_key(i): normalise(i) for i in expected}
    assert len(got) == len(expected) == 20


async def test_replay_rename_and_unshare(client):
    records = f.load_fixture("real-client-sync-requests.json")
    share = await replay(client, records[:5] + records[6:7])
    got = await (await client.get(f"/api/share/{share['id']}/data")).json()
    assert got[0]["data"]["title"] == "Renamed"
    assert got[0]["data"]["directory"].endswith("/proj2")
    delete = records[7]
    resp = await client.delete(delete["path"].replace(RECORDED_ID, share["id"]), json={"secret": share["secret"]})
    assert resp.status == 200
    assert (await client.get(f"/api/share/{share['id']}/data")).status == 404
