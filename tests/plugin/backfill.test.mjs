// Backfill (backfill.js, Outbox.backfill and the plugin's use of them) under the Bun embedded in
// the pinned opencode binary (tests/test_opencode_plugin.py). The opencode client here is a
// stand-in answering the shapes @opencode-ai/sdk gives the plugin ({data}); the real client is
// exercised by tests/test_opencode_runs.py.
import { describe, expect, test } from "bun:test"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const PLUGIN = process.env.CLOUDSESSION_PLUGIN_DIR
const { Outbox, ACKED, PENDING, canonicalJSON } = await import(`${PLUGIN}/outbox.js`)
const { itemsOf, readSession } = await import(`${PLUGIN}/backfill.js`)
const plugin = await import(`${PLUGIN}/cloudsession-share.js`)

const SERVER = "http://127.0.0.1:1" // nothing listens: these tests look at the outbox only
const freshPath = () => join(mkdtempSync(join(tmpdir(), "backfill-")), "outbox.sqlite")
const rows = (outbox) => outbox.db.query("SELECT entity, state, item FROM ops ORDER BY seq").all().map((r) => [r.entity, r.state, JSON.parse(r.item).data])

/** Wait for background work (a deadline, never a fixed sleep). */
const until = async (check, ms = 5000) => {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out")
    await Bun.sleep(5)
  }
}
const session = (extra = {}) => ({ id: "ses_1", title: "old session", time: { created: 1, updated: 2 }, ...extra })
const user = { id: "msg_1", sessionID: "ses_1", role: "user", time: { created: 3 } }
const assistant = { id: "msg_2", sessionID: "ses_1", role: "assistant", providerID: "prov", modelID: "mod-1", time: { created: 4, completed: 6 } }
const text = (id, messageID, t) => ({ id, messageID, sessionID: "ses_1", type: "text", text: t })
const state = () => ({
  info: session(),
  messages: [
    { info: user, parts: [text("prt_1", "msg_1", "hello")] },
    { info: assistant, parts: [text("prt_2", "msg_2", "hi there"), { id: "prt_3", messageID: "msg_2", sessionID: "ses_1", type: "step-finish", reason: "stop" }] },
  ],
  diff: [],
})

describe("the items of a session's state", () => {
  test("the session, each message followed by its parts, then the diff", () => {
    const items = itemsOf("ses_1", state())
    expect(items.map((i) => `${i.type}:${i.data.id ?? ""}`)).toEqual(["session:ses_1", "message:msg_1", "part:prt_1", "message:msg_2", "part:prt_2", "part:prt_3", "session_diff:"])
  })

  test("another session's entries and entries without ids are left out", () => {
    const found = { info: session({ id: "ses_other" }), messages: [{ info: { ...user, sessionID: "ses_other" }, parts: [] }, { info: {}, parts: [] }, { info: user, parts: [{}, text("prt_1", "msg_1", "x")] }], diff: null }
    expect(itemsOf("ses_1", found).map((i) => `${i.type}:${i.data.id}`)).toEqual(["message:msg_1", "part:prt_1"])
  })

  test("read through the client: {data} answers unwrapped, an {error} answer is an error", async () => {
    const calls = []
    const client = {
      session: {
        get: async (o) => (calls.push(["get", o.path.id]), { data: session() }),
        messages: async (o) => (calls.push(["messages", o.path.id]), { data: state().messages }),
        diff: async () => ({ data: [] }),
      },
    }
    const found = await readSession(client, "ses_1")
    expect(found.info.title).toBe("old session")
    expect(found.messages.length).toBe(2)
    expect(calls).toEqual([["get", "ses_1"], ["messages", "ses_1"]])
    const broken = { session: { get: async () => ({ error: { name: "NotFoundError", data: { message: "Session not found" } }, response: { status: 404 } }), messages: async () => ({ data: [] }) } }
    await expect(readSession(broken, "ses_1")).rejects.toThrow("opencode answered 404: Session not found")
  })
})

describe("Outbox.backfill", () => {
  test("records what the outbox does not hold; run again on the same state it records nothing", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    expect(outbox.backfill(share, itemsOf("ses_1", state()))).toBe(7)
    expect(outbox.backfill(share, itemsOf("ses_1", state()))).toBe(0)
    expect(rows(outbox).map(([entity, st]) => `${entity} ${st}`)).toEqual([
      "session pending", "message:msg_1 pending", "part:prt_1 pending", "message:msg_2 pending", "part:prt_2 pending", "part:prt_3 pending", "session_diff pending",
    ])
    // Sent and acknowledged, the same state still adds nothing (idempotent across processes) ...
    const batch = outbox.nextBatch(share)
    outbox.recordAnswer(share, batch, { cursor: 7, applied: batch.opIds.map((op_id, i) => ({ op_id, cursor: i + 1 })) })
    expect(outbox.backfill(share, itemsOf("ses_1", state()))).toBe(0)
    // ... even with its keys in another order (the API and the events may write them differently)
    const reordered = JSON.parse(JSON.stringify(state()), (k, v) => (v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).reverse()) : v))
    expect(outbox.backfill(share, itemsOf("ses_1", reordered))).toBe(0)
    // ... while a part that changed since becomes one new op
    const later = state()
    later.messages[1].parts[0].text = "hi there, and more"
    expect(outbox.backfill(share, itemsOf("ses_1", later))).toBe(1)
    expect(rows(outbox).filter(([, st]) => st === PENDING)).toEqual([["part:prt_2", PENDING, later.messages[1].parts[0]]])
    expect(outbox.counts(share)).toEqual({ pending: 1, in_flight: 0, acked: 7, failed: 0 })
  })

  test("a pending op takes the newer state in place; entities an event changed meanwhile are left alone", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    const older = outbox.enqueue(share, { type: "part", data: text("prt_1", "msg_1", "hel") })
    outbox.enqueue(share, { type: "part", data: text("prt_2", "msg_2", "the event's newer text") })
    const changed = outbox.backfill(share, itemsOf("ses_1", state()), new Set(["part:prt_2"]))
    expect(changed).toBe(6) // session, 2 messages, prt_3 and the diff added, prt_1 updated in place; prt_2 skipped
    const all = outbox.db.query("SELECT op_id, entity, item FROM ops ORDER BY seq").all()
    expect(all.length).toBe(7)
    expect(all[0].op_id).toBe(older)
    expect(JSON.parse(all[0].item).data.text).toBe("hello")
    expect(JSON.parse(all[1].item).data.text).toBe("the event's newer text")
  })

  test("a failed share takes no backfill", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    outbox.markFailed(share, "HTTP 410: Share expired")
    expect(outbox.backfill(share, itemsOf("ses_1", state()))).toBe(0)
    expect(rows(outbox)).toEqual([])
  })

  test("canonical JSON sorts keys at every depth and keeps array order", () => {
    expect(canonicalJSON({ b: 1, a: { d: [2, { y: 1, x: 0 }], c: null } })).toBe('{"a":{"c":null,"d":[2,{"x":0,"y":1}]},"b":1}')
  })
})

describe("the plugin starts sharing a session that already has messages", () => {
  const opencode = (found, { delay = 0 } = {}) => {
    const reads = []
    const answer = async (value) => {
      if (delay) await Bun.sleep(delay)
      return { data: value() }
    }
    return {
      reads,
      client: {
        app: { log: async () => {} },
        config: { providers: async () => ({ data: { providers: [{ id: "prov", models: { "mod-1": { id: "mod-1", name: "Model One" } } }] } }) },
        session: {
          get: (o) => (reads.push(o.path.id), answer(() => found().info)),
          messages: () => answer(() => found().messages),
          diff: () => answer(() => found().diff),
        },
      },
    }
  }

  test("the first change of a shared session records the session's earlier messages and parts, once per process", async () => {
    const path = freshPath()
    const { client, reads } = opencode(state)
    const hooks = await plugin.CloudsessionShare({ client }, { server: SERVER, outbox: path, debounceMs: 60000, flushBudgetMs: 0 })
    await hooks.config({ share: "manual" })
    // The user runs /share on a session that already holds two messages: the session gets share.url.
    const shared = session({ share: { url: "https://example.invalid/share/1" }, time: { created: 1, updated: 9 } })
    await hooks.event({ event: { type: "session.updated", properties: { sessionID: "ses_1", info: shared } } })
    await hooks.event({ event: { type: "session.updated", properties: { sessionID: "ses_1", info: shared } } })
    const seen = new Outbox(path)
    await until(() => seen.db.query("SELECT COUNT(DISTINCT entity) AS n FROM ops").get().n === 8) // the read, and the model looked up after it
    seen.close()
    await hooks.dispose()
    expect(reads).toEqual(["ses_1"]) // read once
    const outbox = new Outbox(path)
    const entities = [...new Set(rows(outbox).map(([entity]) => entity))] // the event's session may be sent, then recorded again
    expect(entities).toEqual(["session", "message:msg_1", "part:prt_1", "message:msg_2", "part:prt_2", "part:prt_3", "session_diff", "model:prov/mod-1"])
    // The event's session (with share.url) was not replaced by the state read with it.
    expect(rows(outbox).filter(([e]) => e === "session").map(([, , data]) => data.share?.url)).toContain("https://example.invalid/share/1")
    expect(rows(outbox).filter(([e]) => e === "session").every(([, , data]) => data.share?.url)).toBe(true)
  })

  test("changes that arrive while the state is being read win over it", async () => {
    const path = freshPath()
    const { client } = opencode(state, { delay: 100 })
    const hooks = await plugin.CloudsessionShare({ client }, { server: SERVER, outbox: path, debounceMs: 60000, flushBudgetMs: 2000 })
    await hooks.config({ share: "auto" })
    await hooks.event({ event: { type: "message.part.updated", properties: { sessionID: "ses_1", part: text("prt_9", "msg_2", "new part"), time: 10 } } })
    // While the read is in flight, prt_2 streams further than the state the read will return.
    await hooks.event({ event: { type: "message.part.updated", properties: { sessionID: "ses_1", part: text("prt_2", "msg_2", "hi there, streamed further"), time: 11 } } })
    await hooks.dispose() // waits for the read within its budget
    const outbox = new Outbox(path)
    const parts = Object.fromEntries(rows(outbox).filter(([e]) => e.startsWith("part:")).map(([e, , data]) => [e, data.text]))
    expect(parts).toEqual({ "part:prt_9": "new part", "part:prt_2": "hi there, streamed further", "part:prt_1": "hello", "part:prt_3": undefined })
    expect(rows(outbox).filter(([e]) => !e.startsWith("model:")).length).toBe(8) // 2 from the events, 6 from the read
    expect(outbox.counts(outbox.shares()[0]).acked).toBe(0) // nothing listens at SERVER
  })

  test("a session not shared is not read", async () => {
    const { client, reads } = opencode(state)
    const hooks = await plugin.CloudsessionShare({ client }, { server: SERVER, outbox: freshPath(), debounceMs: 60000, flushBudgetMs: 0 })
    await hooks.config({ share: "manual" })
    await hooks.event({ event: { type: "message.updated", properties: { sessionID: "ses_1", info: user } } })
    await hooks.dispose()
    expect(reads).toEqual([])
  })

  test("a failed read is tried again with the session's next change", async () => {
    let fail = true
    let failures = 0
    const { client, reads } = opencode(() => {
      if (fail) failures += 1
      if (fail) throw new Error("not ready")
      return state()
    })
    const path = freshPath()
    const hooks = await plugin.CloudsessionShare({ client }, { server: SERVER, outbox: path, debounceMs: 60000, flushBudgetMs: 0 })
    await hooks.config({ share: "auto" })
    await hooks.event({ event: { type: "message.updated", properties: { sessionID: "ses_1", info: user } } })
    await until(() => failures > 0)
    await Bun.sleep(5) // the failure is handled in the same turn as the rejection
    fail = false
    await hooks.event({ event: { type: "message.updated", properties: { sessionID: "ses_1", info: user } } })
    const seen = new Outbox(path)
    await until(() => seen.db.query("SELECT COUNT(DISTINCT entity) AS n FROM ops").get().n === 8) // msg_1, the 6 other entities read, the model
    seen.close()
    await hooks.dispose()
    expect(reads).toEqual(["ses_1", "ses_1"])
    const outbox = new Outbox(path)
    expect(outbox.counts({ name: `${SERVER} ses_1` }).acked).toBe(0)
    expect([...new Set(rows(outbox).map(([entity]) => entity))].sort()).toEqual(
      ["message:msg_1", "message:msg_2", "model:prov/mod-1", "part:prt_1", "part:prt_2", "part:prt_3", "session", "session_diff"],
    )
  })
})
