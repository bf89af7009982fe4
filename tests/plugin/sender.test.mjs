// Delivery (sender.js) against a real `cloudsession serve` started by tests/test_opencode_plugin.py
// with CLOUDSESSION_MAX_BODY_BYTES=2048, under the Bun embedded in the pinned opencode binary.
import { describe, expect, test } from "bun:test"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const PLUGIN = process.env.CLOUDSESSION_PLUGIN_DIR
const SERVER = process.env.CLOUDSESSION_TEST_SERVER
const { Outbox, ACKED, FAILED } = await import(`${PLUGIN}/outbox.js`)
const { Sender, parseRetryAfter } = await import(`${PLUGIN}/sender.js`)
const plugin = await import(`${PLUGIN}/cloudsession-share.js`)

let n = 0
const setup = (batchSize = 4) => {
  const outbox = new Outbox(join(mkdtempSync(join(tmpdir(), "sender-")), "outbox.sqlite"))
  const sessionID = `ses_plugintest${Date.now().toString(36)}${++n}x`
  const share = outbox.share(SERVER, sessionID)
  const logs = []
  const sender = new Sender(outbox, { batchSize, log: (level, message) => logs.push(`${level} ${message}`) })
  return { outbox, share, sender, logs, sessionID }
}
const part = (id, text) => ({ type: "part", data: { id, messageID: "msg_1", sessionID: "ses_x", type: "text", text } })
const post = async (path, body) => {
  const resp = await fetch(SERVER + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
  return { status: resp.status, body: await resp.json() }
}
const data = async (shareID) => (await fetch(`${SERVER}/api/share/${shareID}/data`)).json()
const texts = (items) => Object.fromEntries(items.filter((i) => i.type === "part").map((i) => [i.data.id, i.data.text]))

describe("delivery to a real server", () => {
  test("a batch whose answer was lost is resent byte for byte and acknowledged as duplicates", async () => {
    const { outbox, share, sender } = setup()
    for (const id of ["prt_a", "prt_b", "prt_c"]) outbox.enqueue(share, part(id, id))
    await sender.connect(share)
    const batch = outbox.nextBatch(share)
    // The first delivery reaches the server, its answer never reaches us.
    const lost = await sender.post(SERVER, `/api/share/${share.share_id}/ops`, `{"secret":${JSON.stringify(share.secret)},"epoch":0,"ops":${batch.opsJSON}}`)
    expect(lost.applied.length).toBe(3)
    sender.redeemed.clear() // a reconnect
    expect(await sender.drain(share)).toEqual({ done: true })
    expect(outbox.counts(share)).toEqual({ pending: 0, in_flight: 0, acked: 3, failed: 0 })
    const acks = outbox.db.query("SELECT ack_cursor FROM ops ORDER BY seq").all().map((r) => r.ack_cursor)
    expect(acks).toEqual(lost.applied.map((a) => a.cursor)) // the duplicates carry the first cursors
    const redeemed = await post(`/api/share/${share.share_id}/redeem`, { secret: share.secret })
    expect(redeemed.body.cursor).toBe(3) // nothing applied twice
    expect(texts(await data(share.share_id))).toEqual({ prt_a: "prt_a", prt_b: "prt_b", prt_c: "prt_c" })
  })

  test("after a rotation (403) the share is re-created with the session ID, redeemed and the batch resent", async () => {
    const { outbox, share, sender } = setup()
    outbox.enqueue(share, part("prt_a", "before"))
    expect((await sender.drain(share)).done).toBe(true)
    const rotated = await post(`/api/share/${share.share_id}/rotate`, { secret: share.secret })
    expect(rotated.status).toBe(200)
    const oldSecret = share.secret
    outbox.enqueue(share, part("prt_b", "after the rotation"))
    expect((await sender.drain(share)).done).toBe(true)
    expect(share.secret).toBe(rotated.body.secret)
    expect(share.secret).not.toBe(oldSecret)
    expect(outbox.counts(share)).toEqual({ pending: 0, in_flight: 0, acked: 2, failed: 0 })
    expect(texts(await data(share.share_id))).toEqual({ prt_a: "before", prt_b: "after the rotation" })
  })

  test("a batch too large (413) is split until it fits", async () => {
    const { outbox, share, sender } = setup(10) // the server takes request bodies of at most 2 KiB
    for (let i = 0; i < 10; i++) outbox.enqueue(share, part(`prt_${i}`, `t${i} `.padEnd(300, "x")))
    expect((await sender.drain(share)).done).toBe(true)
    expect(outbox.counts(share)).toEqual({ pending: 0, in_flight: 0, acked: 10, failed: 0 })
    expect(Object.keys(texts(await data(share.share_id))).length).toBe(10)
    const batches = outbox.db.query("SELECT batch_id, COUNT(*) AS n FROM ops GROUP BY batch_id").all()
    expect(Math.max(...batches.map((b) => b.n))).toBeLessThanOrEqual(4)
  })

  test("an expired share (410) stops delivery: undelivered changes fail and the user is told", async () => {
    const { outbox, share, sender, logs } = setup()
    outbox.enqueue(share, part("prt_a", "delivered"))
    expect((await sender.drain(share)).done).toBe(true)
    expect((await post(`/api/share/${share.share_id}/expiry`, { secret: share.secret, ttl: 1 })).status).toBe(200)
    await Bun.sleep(1200)
    outbox.enqueue(share, part("prt_b", "too late"))
    expect((await sender.drain(share)).done).toBe(true)
    expect(share.status).toBe(FAILED)
    expect(outbox.counts(share)).toEqual({ pending: 0, in_flight: 0, acked: 1, failed: 1 })
    expect(logs.join("\n")).toContain("is gone")
    expect(logs.join("\n")).not.toContain(share.secret)
    expect(outbox.enqueue(share, part("prt_c", "ignored"))).toBeNull()
  })

  test("no server: the batch waits for its backoff; new changes do not pull the retry in", async () => {
    const outbox = new Outbox(join(mkdtempSync(join(tmpdir(), "sender-")), "outbox.sqlite"))
    const share = outbox.share("http://127.0.0.1:9", "ses_nowhere")
    const sender = new Sender(outbox)
    outbox.enqueue(share, part("prt_a", "x"))
    const first = await sender.drain(share)
    expect(first.done).toBe(false)
    expect(first.retryAt).toBeGreaterThan(Date.now())
    outbox.enqueue(share, part("prt_b", "y"))
    expect(await sender.drain(share)).toEqual({ done: false, retryAt: first.retryAt })
    expect(share.last_error).toMatch(/^no answer/)
  })

  test("the stock client's legacy syncs and the plugin's ops on one share never make it older", async () => {
    const { outbox, share, sender } = setup()
    const tool = (status, updated) => ({
      type: "part",
      data: { id: "prt_tool", messageID: "msg_1", sessionID: "ses_x", type: "tool", tool: "bash", callID: "c1", state: { status, input: {}, time: { start: 1 } }, time: { updated } },
    })
    outbox.enqueue(share, tool("completed", 2000))
    expect((await sender.drain(share)).done).toBe(true)
    const acked = share.cursor
    // opencode's own share client, late: an older state of the same part and a new message.
    const legacy = await post(`/api/share/${share.share_id}/sync`, {
      secret: share.secret,
      data: [tool("running", 1000), { type: "message", data: { id: "msg_2", sessionID: "ses_x", role: "user", time: { created: 3 } } }],
    })
    expect(legacy.status).toBe(200)
    outbox.enqueue(share, part("prt_after", "after the legacy sync"))
    expect((await sender.drain(share)).done).toBe(true)
    const items = await data(share.share_id)
    expect(items.find((i) => i.type === "part" && i.data.id === "prt_tool").data.state.status).toBe("completed")
    expect(items.some((i) => i.type === "message" && i.data.id === "msg_2")).toBe(true)
    expect(texts(items).prt_after).toBe("after the legacy sync")
    const redeemed = await post(`/api/share/${share.share_id}/redeem`, { secret: share.secret })
    expect(redeemed.body.cursor).toBe(acked + 2) // the legacy sync and the later op, each once
    expect(outbox.rewind(share, redeemed.body.cursor)).toBe(0)
  })

  test("Retry-After is honoured, in seconds or as a date", () => {
    expect(parseRetryAfter("7", 0)).toBe(7000)
    expect(parseRetryAfter(new Date(60000).toUTCString(), 0)).toBe(60000)
    expect(parseRetryAfter(null)).toBeNull()
    const { outbox, share } = setup()
    outbox.enqueue(share, part("prt_a", "x"))
    const batch = outbox.nextBatch(share)
    expect(outbox.retryLater(share, batch, "HTTP 429", { now: 1000, retryAfterMs: 120000 })).toBe(121000)
  })
})

describe("the plugin entry", () => {
  test("exports one plugin function only (opencode calls every export)", () => {
    expect(Object.keys(plugin)).toEqual(["CloudsessionShare"])
  })

  test("events become ops, the model is looked up lazily, and dispose delivers within its budget", async () => {
    const path = join(mkdtempSync(join(tmpdir(), "plugin-")), "outbox.sqlite")
    const sessionID = `ses_pluginentry${Date.now().toString(36)}`
    const lookups = []
    const client = {
      app: { log: async () => {} },
      config: {
        providers: async () => {
          lookups.push(1)
          return { data: { providers: [{ id: "prov", models: { "mod-1": { id: "mod-1", name: "Model One" } } }] } }
        },
      },
    }
    const hooks = await plugin.CloudsessionShare({ client }, { server: SERVER, outbox: path, debounceMs: 60000 })
    await hooks.config({ share: "manual" })
    const info = { id: sessionID, title: "entry test", share: { url: "https://example.invalid/s/x" }, time: { created: 1, updated: 2 } }
    const assistant = { id: "msg_a", sessionID, role: "assistant", providerID: "prov", modelID: "mod-1", time: { created: 3 } }
    const events = [
      { type: "session.updated", properties: { sessionID, info } },
      { type: "message.updated", properties: { sessionID, info: assistant } },
      { type: "message.part.delta", properties: { sessionID, messageID: "msg_a", partID: "prt_1", delta: "Hel" } },
      { type: "message.part.updated", properties: { sessionID, part: { id: "prt_1", messageID: "msg_a", sessionID, type: "text", text: "Hello" }, time: 4 } },
      { type: "message.updated", properties: { sessionID: "ses_notshared", info: { id: "msg_z", sessionID: "ses_notshared", role: "user" } } },
    ]
    for (const event of events) await hooks.event({ event })
    await Bun.sleep(50) // the provider lookup runs in the background
    await hooks.dispose()
    expect(lookups.length).toBe(1)
    const outbox = new Outbox(path)
    const [share] = outbox.shares()
    expect(outbox.shares().length).toBe(1) // the session without share.url is not shared in manual mode
    expect(outbox.counts(share)).toEqual({ pending: 0, in_flight: 0, acked: 4, failed: 0 })
    expect(outbox.db.query("SELECT owner FROM lease").get()).toBeNull() // released at dispose
    const items = await data(share.share_id)
    expect(items.map((i) => i.type).filter((t) => t !== "session_diff").sort()).toEqual(["message", "model", "part", "session"])
    expect(items.find((i) => i.type === "model").data[0].name).toBe("Model One")
    expect(texts(items)).toEqual({ prt_1: "Hello" })
  })
})
