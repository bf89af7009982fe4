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


async def test_data_output_validates_against_client_schemas(client):
    """Everything /data emits for the real client's session validates against opencode's own
    entity schemas (which are stricter than the client: no extra keys)."""
    from jsonschema import Draft202012Validator

    schemas = f.load_fixture("entity-schemas.json")

    def validator(name):
        return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": schemas["components"]})

    by_type = {"session": validator("Session"), "message": validator("Message"), "part": validator("Part")}
    element = {"session_diff": validator("SnapshotFileDiff"), "model": validator("Model")}
    share = await replay(client, f.load_fixture("real-client-sync-requests.json")[:5])
    items = await (await client.get(f"/api/share/{share['id']}/data")).json()
    for it in items:
        checks = [(by_type[it["type"]], it["data"])] if it["type"] in by_type else [(element[it["type"]], e) for e in it["data"]]
        for check, value in checks:
            errors = [e.message for e in check.iter_errors(value)]
            assert errors == [], (it["type"], errors)
