// Unit tests of the plugin's outbox, run by the Bun embedded in the pinned opencode binary
// (tests/test_opencode_plugin.py: BUN_BE_BUN=1 opencode test tests/plugin).
import { describe, expect, test } from "bun:test"
import { mkdtempSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const PLUGIN = process.env.CLOUDSESSION_PLUGIN_DIR
const { Outbox, leaseOwner, ACKED, FAILED, IN_FLIGHT, PENDING, uuid7, entityOf, defaultOutboxPath } = await import(`${PLUGIN}/outbox.js`)
const { itemOf } = await import(`${PLUGIN}/events.js`)

const SERVER = "http://127.0.0.1:1"
const freshPath = () => join(mkdtempSync(join(tmpdir(), "outbox-")), "data", "outbox.sqlite")
const part = (id, text, extra = {}) => ({ type: "part", data: { id, messageID: "msg_1", sessionID: "ses_1", type: "text", text, ...extra } })
const states = (outbox) => outbox.db.query("SELECT op_id, entity, state, item FROM ops ORDER BY seq").all()

describe("enqueue", () => {
  test("an unsent op of an entity is replaced in place by the newer change", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    const first = outbox.enqueue(share, part("prt_a", "Hel"))
    outbox.enqueue(share, part("prt_b", "other"))
    const again = outbox.enqueue(share, part("prt_a", "Hello"))
    expect(again).toBe(first)
    const rows = states(outbox)
    expect(rows.map((r) => r.entity)).toEqual(["part:prt_a", "part:prt_b"])
    expect(JSON.parse(rows[0].item).data.text).toBe("Hello")
    expect(rows.every((r) => r.state === PENDING)).toBe(true)
  })

  test("an op already in a batch never changes: a newer change becomes a new op", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    const sent = outbox.enqueue(share, part("prt_a", "Hel"))
    const batch = outbox.nextBatch(share)
    expect(batch.opIds).toEqual([sent])
    const newer = outbox.enqueue(share, part("prt_a", "Hello"))
    expect(newer).not.toBe(sent)
    const rows = states(outbox)
    expect(rows.map((r) => [r.op_id, r.state, JSON.parse(r.item).data.text])).toEqual([
      [sent, IN_FLIGHT, "Hel"],
      [newer, PENDING, "Hello"],
    ])
    // and acknowledged, it stays as it was
    outbox.recordAnswer(share, batch, { cursor: 1, applied: [{ op_id: sent, cursor: 1 }] })
    outbox.enqueue(share, part("prt_a", "Hello world"))
    const after = states(outbox)
    expect(after.map((r) => [r.state, JSON.parse(r.item).data.text])).toEqual([
      [ACKED, "Hel"],
      [PENDING, "Hello world"],
    ])
  })

  test("op ids are canonical UUIDv7 in creation order", () => {
    const ids = [uuid7(), uuid7(), uuid7()]
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect([...ids].sort()).toEqual(ids)
  })

  test("model items are keyed by provider and model", () => {
    expect(entityOf({ type: "model", data: [{ providerID: "p", id: "m" }] })).toBe("model:p/m")
    expect(entityOf({ type: "session", data: { id: "ses_1" } })).toBe("session")
  })

  test("a failed share takes no more changes", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    outbox.enqueue(share, part("prt_a", "x"))
    expect(outbox.markFailed(share, "HTTP 410: Share expired")).toBe(1)
    expect(outbox.enqueue(share, part("prt_b", "y"))).toBeNull()
    expect(outbox.counts(share)).toEqual({ pending: 0, in_flight: 0, acked: 0, failed: 1 })
  })
})

describe("batches", () => {
  test("a batch is fixed once: the resend is byte-identical, in this process and after a reopen", () => {
    const path = freshPath()
    const outbox = new Outbox(path)
    const share = outbox.share(SERVER, "ses_1")
    for (const id of ["prt_a", "prt_b", "prt_c"]) outbox.enqueue(share, part(id, `text of ${id} ✓ "quoted"`))
    const first = outbox.nextBatch(share, 2)
    outbox.enqueue(share, part("prt_a", "changed after the batch was cut"))
    outbox.retryLater(share, first, "no answer")
    const second = outbox.nextBatch(share, 2)
    expect(second.opsJSON).toBe(first.opsJSON)
    expect(second.batch_id).toBe(first.batch_id)
    outbox.close()
    const reopened = new Outbox(path)
    const third = reopened.nextBatch(reopened.share(SERVER, "ses_1"), 2)
    expect(third.opsJSON).toBe(first.opsJSON)
    const envelopes = JSON.parse(first.opsJSON)
    expect(envelopes.map((e) => e.seq)).toEqual([1, 2])
    expect(envelopes.every((e) => e.batch_id === first.batch_id)).toBe(true)
    expect(envelopes[0].item.data.text).toBe('text of prt_a ✓ "quoted"')
  })

  test("a 413 splits the batch; a single op too large fails", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    for (const id of ["prt_a", "prt_b", "prt_c"]) outbox.enqueue(share, part(id, id))
    const whole = outbox.nextBatch(share)
    expect(outbox.splitBatch(share, whole, "HTTP 413")).toBe(true)
    const head = outbox.nextBatch(share)
    expect(head.opIds).toEqual(whole.opIds.slice(0, 2))
    expect(head.batch_id).not.toBe(whole.batch_id)
    expect(outbox.counts(share)).toEqual({ pending: 1, in_flight: 2, acked: 0, failed: 0 })
    outbox.splitBatch(share, head, "HTTP 413")
    const one = outbox.nextBatch(share)
    expect(one.opIds).toEqual([whole.opIds[0]])
    expect(outbox.splitBatch(share, one, "HTTP 413")).toBe(false)
    expect(outbox.counts(share).failed).toBe(1)
  })

  test("rejections are final, acks carry their cursor, and a server behind us gets them again", () => {
    const outbox = new Outbox(freshPath())
    const share = outbox.share(SERVER, "ses_1")
    for (const id of ["prt_a", "prt_b", "prt_c"]) outbox.enqueue(share, part(id, id))
    const batch = outbox.nextBatch(share)
    const [a, b, c] = batch.opIds
    outbox.recordAnswer(share, batch, { cursor: 7, applied: [{ op_id: a, cursor: 6 }], duplicates: [{ op_id: b, cursor: 7 }], rejected: [{ op_id: c, reason: "outside_window" }] })
    expect(share.cursor).toBe(7)
    expect(outbox.counts(share)).toEqual({ pending: 0, in_flight: 0, acked: 2, failed: 1 })
    expect(outbox.rewind(share, 7)).toBe(0)
    expect(outbox.rewind(share, 6)).toBe(1)
    expect(outbox.nextBatch(share).opIds).toEqual([b])
  })
})

describe("lease", () => {
  test("one process at a time: a second outbox on the same file waits until the lease is released or expires", () => {
    const path = freshPath()
    const one = new Outbox(path)
    const two = new Outbox(path)
    const now = Date.now()
    expect(one.acquireLease("one", 30000, now)).toBe(true)
    expect(two.acquireLease("two", 30000, now)).toBe(false)
    expect(one.acquireLease("one", 30000, now + 1000)).toBe(true) // renewal
    expect(two.acquireLease("two", 30000, now + 30000)).toBe(false)
    expect(two.acquireLease("two", 30000, now + 31001)).toBe(true) // expired
    expect(one.acquireLease("one", 30000, now + 31002)).toBe(false)
    two.releaseLease("two")
    expect(one.acquireLease("one", 30000, now + 31003)).toBe(true)
  })

  test("a holder whose process is gone loses the lease at once", () => {
    const path = freshPath()
    const outbox = new Outbox(path)
    const dead = Bun.spawnSync(["true"]).pid // a process that has exited
    const now = Date.now()
    expect(outbox.acquireLease(leaseOwner(process.pid), 30000, now)).toBe(true)
    expect(outbox.acquireLease(leaseOwner(process.pid), 30000, now)).toBe(false) // alive: a second instance in this process waits
    outbox.releaseLease(outbox.db.query("SELECT owner FROM lease").get().owner)
    expect(outbox.acquireLease(leaseOwner(dead), 30000, now)).toBe(true)
    expect(outbox.acquireLease(leaseOwner(process.pid), 30000, now)).toBe(true)
  })
})

describe("the file", () => {
  test("is mode 0600 (it holds write secrets), WAL with synchronous=FULL, under opencode's data dir", () => {
    const path = freshPath()
    const outbox = new Outbox(path)
    outbox.enqueue(outbox.share(SERVER, "ses_1"), part("prt_a", "x"))
    for (const file of [path, `${path}-wal`]) expect(statSync(file).mode & 0o777).toBe(0o600)
    expect(outbox.db.query("PRAGMA journal_mode").get().journal_mode).toBe("wal")
    expect(outbox.db.query("PRAGMA synchronous").get().synchronous).toBe(2)
    expect(defaultOutboxPath({ XDG_DATA_HOME: "/x/data", HOME: "/h" })).toBe("/x/data/opencode/cloudsession-outbox.sqlite")
    expect(defaultOutboxPath({ HOME: "/h" })).toBe("/h/.local/share/opencode/cloudsession-outbox.sqlite")
  })
})

describe("events", () => {
  test("each handled event becomes one sync item; streaming deltas are ignored", () => {
    const info = { id: "ses_1", title: "t" }
    expect(itemOf({ type: "session.updated", properties: { sessionID: "ses_1", info } })).toEqual({ sessionID: "ses_1", item: { type: "session", data: info } })
    const msg = { id: "msg_1", sessionID: "ses_1", role: "user" }
    expect(itemOf({ type: "message.updated", properties: { sessionID: "ses_1", info: msg } }).item).toEqual({ type: "message", data: msg })
    const p = part("prt_a", "x").data
    expect(itemOf({ type: "message.part.updated", properties: { sessionID: "ses_1", part: p, time: 1 } }).item).toEqual({ type: "part", data: p })
    expect(itemOf({ type: "session.diff", properties: { sessionID: "ses_1", diff: [] } }).item).toEqual({ type: "session_diff", data: [] })
    expect(itemOf({ type: "message.part.delta", properties: { sessionID: "ses_1", delta: "x" } })).toBeNull()
    expect(itemOf({ type: "session.idle", properties: { sessionID: "ses_1" } })).toBeNull()
  })
})
