// The plugin's durable outbox: every session change is written to SQLite before it is sent.
//
// The JavaScript twin of cloudsession/client/outbox.py (docs/protocol.md), with two things the
// plugin needs on top:
//
// - ops are keyed by entity ("session", "message:<id>", "part:<id>", "session_diff", "model:<p>/<m>"):
//   an op not yet sent for an entity is replaced in place by a newer change of that entity (same
//   op_id and seq, newer item), while an op already assigned to a batch never changes: a newer
//   change then becomes a new op;
// - a lease row, so that one process at a time sends (several opencode processes, and a plugin
//   started twice in one process, share one outbox file).
//
// An op moves pending -> in_flight (assigned to a batch, fixed once: batch_id and seq) -> acked
// (the server applied it or already had it) or failed (rejected, or the share is gone). A batch is
// resent byte for byte until it is answered, so the server's ledger answers a retry as duplicates.
// Each write is one transaction with synchronous=FULL: once enqueue returns, the change survives
// a crash. The file is mode 0600 (it holds the shares' write secrets).

import { Database } from "bun:sqlite"
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from "node:fs"
import { homedir, hostname } from "node:os"
import { dirname, join } from "node:path"

export const PENDING = "pending"
export const IN_FLIGHT = "in_flight"
export const ACKED = "acked"
export const FAILED = "failed"

const SCHEMA = `
CREATE TABLE IF NOT EXISTS shares (
  name TEXT PRIMARY KEY,              -- server URL + " " + session ID
  server TEXT NOT NULL,
  session_id TEXT NOT NULL,
  share_id TEXT,
  secret TEXT,
  epoch INTEGER NOT NULL DEFAULT 0,
  url TEXT,
  cursor INTEGER NOT NULL DEFAULT 0,  -- the highest cursor the server acknowledged
  next_seq INTEGER NOT NULL DEFAULT 1,
  status TEXT NOT NULL DEFAULT 'active',  -- active | failed (the share is gone: nothing more is sent)
  last_error TEXT,
  updated_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ops (
  op_id TEXT PRIMARY KEY,
  share TEXT NOT NULL,
  entity TEXT NOT NULL,
  seq INTEGER NOT NULL,
  item TEXT NOT NULL,                 -- the sync item, JSON
  state TEXT NOT NULL,
  batch_id TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_retry_at INTEGER NOT NULL DEFAULT 0,  -- epoch ms
  ack_cursor INTEGER,
  error TEXT
);
CREATE INDEX IF NOT EXISTS ops_by_state ON ops(share, state, seq);
CREATE INDEX IF NOT EXISTS ops_by_entity ON ops(share, entity, state);
CREATE TABLE IF NOT EXISTS lease (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  owner TEXT NOT NULL,
  expires_at INTEGER NOT NULL         -- epoch ms
);
`

/** opencode's data directory: $XDG_DATA_HOME/opencode, else ~/.local/share/opencode. */
export function defaultOutboxPath(env = process.env) {
  const base = env.XDG_DATA_HOME || join(env.HOME || homedir(), ".local", "share")
  return join(base, "opencode", "cloudsession-outbox.sqlite")
}

let lastMs = 0
let counter = 0

/** A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, a 12-bit counter in rand_a, then randomness. */
export function uuid7(now = Date.now()) {
  let ms = now
  if (ms <= lastMs) {
    counter += 1
    if (counter > 0xfff) {
      lastMs += 1
      counter = 0
    }
    ms = lastMs
  } else {
    lastMs = ms
    counter = 0
  }
  const bytes = new Uint8Array(16)
  crypto.getRandomValues(bytes)
  let t = ms
  for (let i = 5; i >= 0; i--) {
    bytes[i] = t % 256
    t = Math.floor(t / 256)
  }
  bytes[6] = 0x70 | ((counter >> 8) & 0x0f)
  bytes[7] = counter & 0xff
  bytes[8] = 0x80 | (bytes[8] & 0x3f)
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

/** The same ops in the same order always make the same batch id (protocol: 1-128 chars). */
export function batchIdOf(opIds) {
  const hasher = new Bun.CryptoHasher("sha256")
  hasher.update(opIds.join(","))
  return "b-" + hasher.digest("hex").slice(0, 40)
}

/** The entity an item is about: an unsent op of the same entity is replaced by a newer one. */
export function entityOf(item) {
  const data = (Array.isArray(item.data) ? item.data[0] : item.data) || {}
  switch (item.type) {
    case "session":
      return "session"
    case "session_diff":
      return "session_diff"
    case "message":
      return `message:${data.id}`
    case "part":
      return `part:${data.id}`
    case "model":
      return `model:${data.providerID}/${data.id}`
    default:
      return `${item.type}:${data.id}`
  }
}

/** JSON with object keys sorted: the same value read from an event or from opencode's API
 * compares equal whatever order its keys were written in. */
export function canonicalJSON(value) {
  if (Array.isArray(value)) return "[" + value.map(canonicalJSON).join(",") + "]"
  if (value && typeof value === "object") {
    return "{" + Object.keys(value).sort().filter((k) => value[k] !== undefined).map((k) => JSON.stringify(k) + ":" + canonicalJSON(value[k])).join(",") + "}"
  }
  return JSON.stringify(value) ?? "null"
}

function sameContent(storedText, text) {
  return storedText === text || canonicalJSON(JSON.parse(storedText)) === canonicalJSON(JSON.parse(text))
}

/** Exponential backoff, 0.5 s doubling to 30 s, jittered in the upper half. */
export function backoffDelay(attempts, { base = 500, cap = 30000, random = Math.random } = {}) {
  return Math.min(cap, base * 2 ** Math.max(attempts - 1, 0)) * (0.5 + random() / 2)
}

/** A lease owner is "<pid>@<host>:<random>". A holder whose process is gone (opencode killed, or
 * `opencode serve` stopped by SIGTERM without running dispose) gives the lease up at once. */
export function leaseOwner(pid = process.pid) {
  return `${pid}@${hostname()}:${crypto.randomUUID()}`
}

function holderAlive(owner) {
  const match = /^(\d+)@([^:]*):/.exec(owner)
  if (!match || match[2] !== hostname()) return true // another machine's (shared disk): trust the expiry
  try {
    process.kill(Number(match[1]), 0)
    return true
  } catch (error) {
    return error?.code === "EPERM"
  }
}

export class Outbox {
  constructor(path = defaultOutboxPath()) {
    this.path = path
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
    if (!existsSync(path)) closeSync(openSync(path, "a", 0o600))
    chmodSync(path, 0o600)
    this.db = new Database(path, { create: true })
    this.db.exec("PRAGMA busy_timeout = 5000")
    this.db.exec("PRAGMA journal_mode = WAL")
    this.db.exec("PRAGMA synchronous = FULL")
    this.db.exec(SCHEMA)
    for (const suffix of ["-wal", "-shm"]) {
      if (existsSync(path + suffix)) chmodSync(path + suffix, 0o600)
    }
  }

  close() {
    this.db.close()
  }

  tx(fn) {
    return this.db.transaction(fn).immediate()
  }

  // -- the lease -------------------------------------------------------------------------------

  /** Take or renew the sending lease; true when `owner` holds it until now + ttlMs. */
  acquireLease(owner, ttlMs = 30000, now = Date.now()) {
    return this.tx(() => {
      const row = this.db.query("SELECT owner, expires_at FROM lease WHERE id = 1").get()
      if (row && row.owner !== owner && row.expires_at > now && holderAlive(row.owner)) return false
      this.db.query("INSERT OR REPLACE INTO lease(id, owner, expires_at) VALUES (1, ?, ?)").run(owner, now + ttlMs)
      return true
    })
  }

  releaseLease(owner) {
    this.tx(() => this.db.query("DELETE FROM lease WHERE id = 1 AND owner = ?").run(owner))
  }

  // -- shares ----------------------------------------------------------------------------------

  static shareName(server, sessionID) {
    return `${server.replace(/\/+$/, "")} ${sessionID}`
  }

  share(server, sessionID) {
    const name = Outbox.shareName(server, sessionID)
    return this.tx(() => {
      this.db
        .query("INSERT OR IGNORE INTO shares(name, server, session_id, updated_at) VALUES (?, ?, ?, ?)")
        .run(name, server.replace(/\/+$/, ""), sessionID, Date.now())
      return this.db.query("SELECT * FROM shares WHERE name = ?").get(name)
    })
  }

  /** The share row if the outbox knows this session already (it was shared before). */
  findShare(server, sessionID) {
    return this.db.query("SELECT * FROM shares WHERE name = ?").get(Outbox.shareName(server, sessionID)) || null
  }

  shares() {
    return this.db.query("SELECT * FROM shares ORDER BY name").all()
  }

  saveCredentials(share, { share_id, secret, url, epoch }) {
    Object.assign(share, { share_id, secret, url, epoch })
    this.tx(() =>
      this.db
        .query("UPDATE shares SET share_id = ?, secret = ?, url = ?, epoch = ?, updated_at = ? WHERE name = ?")
        .run(share_id, secret, url, epoch, Date.now(), share.name),
    )
  }

  setError(share, error) {
    share.last_error = error
    this.db.query("UPDATE shares SET last_error = ?, updated_at = ? WHERE name = ?").run(error, Date.now(), share.name)
  }

  /** The share is gone (404/410): every undelivered op fails and nothing more is sent to it. */
  markFailed(share, error) {
    return this.tx(() => {
      share.status = FAILED
      share.last_error = error
      this.db.query("UPDATE shares SET status = ?, last_error = ?, updated_at = ? WHERE name = ?").run(FAILED, error, Date.now(), share.name)
      return this.db
        .query("UPDATE ops SET state = ?, error = ? WHERE share = ? AND state IN (?, ?)")
        .run(FAILED, error, share.name, PENDING, IN_FLIGHT).changes
    })
  }

  // -- enqueue ---------------------------------------------------------------------------------

  /** Persist one change. An unsent (pending) op of the same entity takes the new item in place
   * (same op_id, same seq); otherwise a new op is appended. Returns the op id. Nothing is
   * written for a share that has failed. */
  enqueue(share, item, now = Date.now()) {
    const entity = entityOf(item)
    const text = JSON.stringify(item)
    return this.tx(() => {
      const row = this.db.query("SELECT status, next_seq FROM shares WHERE name = ?").get(share.name)
      if (!row || row.status === FAILED) return null
      const pending = this.db
        .query("SELECT op_id, item FROM ops WHERE share = ? AND entity = ? AND state = ?")
        .get(share.name, entity, PENDING)
      if (pending) {
        if (pending.item !== text) this.db.query("UPDATE ops SET item = ? WHERE op_id = ?").run(text, pending.op_id)
        return pending.op_id
      }
      const opId = uuid7(now)
      this.db
        .query("INSERT INTO ops(op_id, share, entity, seq, item, state) VALUES (?, ?, ?, ?, ?, ?)")
        .run(opId, share.name, entity, row.next_seq, text, PENDING)
      this.db.query("UPDATE shares SET next_seq = ? WHERE name = ?").run(row.next_seq + 1, share.name)
      return opId
    })
  }

  /** Record a session's current state read when sharing starts (backfill.js): for each item, an
   * op only when the outbox does not already hold that entity in that form. The entity's latest op
   * with the same content: nothing. A pending op: takes the item in place. Otherwise a new op.
   * Entities in `skip` (changed by an event since the state was read, so the event is newer) are
   * left alone. One transaction; returns how many ops were added or updated. */
  backfill(share, items, skip = new Set(), now = Date.now()) {
    return this.tx(() => {
      const row = this.db.query("SELECT status, next_seq FROM shares WHERE name = ?").get(share.name)
      if (!row || row.status === FAILED) return 0
      const latestOf = this.db.query("SELECT op_id, item, state FROM ops WHERE share = ? AND entity = ? ORDER BY seq DESC LIMIT 1")
      const replace = this.db.query("UPDATE ops SET item = ? WHERE op_id = ?")
      const insert = this.db.query("INSERT INTO ops(op_id, share, entity, seq, item, state) VALUES (?, ?, ?, ?, ?, ?)")
      let seq = row.next_seq
      let changed = 0
      for (const item of items) {
        const entity = entityOf(item)
        if (skip.has(entity)) continue
        const text = JSON.stringify(item)
        const latest = latestOf.get(share.name, entity)
        if (latest && sameContent(latest.item, text)) continue
        if (latest && latest.state === PENDING) {
          replace.run(text, latest.op_id)
        } else {
          insert.run(uuid7(now), share.name, entity, seq, text, PENDING)
          seq += 1
        }
        changed += 1
      }
      if (seq !== row.next_seq) this.db.query("UPDATE shares SET next_seq = ? WHERE name = ?").run(seq, share.name)
      return changed
    })
  }

  // -- batches ---------------------------------------------------------------------------------

  /** The batch to send: the one in flight (resent exactly as it was), else a new one of the
   * oldest pending ops. null when nothing is left. */
  nextBatch(share, maxOps = 100) {
    return this.tx(() => {
      const first = this.db
        .query("SELECT batch_id FROM ops WHERE share = ? AND state = ? ORDER BY seq LIMIT 1")
        .get(share.name, IN_FLIGHT)
      let chosen
      if (first) {
        chosen = first.batch_id
      } else {
        const ids = this.db
          .query("SELECT op_id FROM ops WHERE share = ? AND state = ? ORDER BY seq LIMIT ?")
          .all(share.name, PENDING, maxOps)
          .map((r) => r.op_id)
        if (ids.length === 0) return null
        chosen = batchIdOf(ids)
        const update = this.db.query("UPDATE ops SET state = ?, batch_id = ? WHERE op_id = ?")
        for (const id of ids) update.run(IN_FLIGHT, chosen, id)
      }
      return this.batchRows(share, chosen)
    })
  }

  batchRows(share, batchId) {
    const rows = this.db
      .query("SELECT * FROM ops WHERE share = ? AND batch_id = ? AND state = ? ORDER BY seq")
      .all(share.name, batchId, IN_FLIGHT)
    return {
      batch_id: batchId,
      opIds: rows.map((r) => r.op_id),
      // Built from the stored text, so a resend is byte-identical.
      opsJSON: "[" + rows.map((r) => `{"op_id":"${r.op_id}","batch_id":"${r.batch_id}","seq":${r.seq},"item":${r.item}}`).join(",") + "]",
      attempts: Math.max(...rows.map((r) => r.attempts)),
      next_retry_at: Math.max(...rows.map((r) => r.next_retry_at)),
    }
  }

  /** Store the server's answer: acked ops with their cursor, rejected ops failed. */
  recordAnswer(share, batch, answer) {
    this.tx(() => {
      const ack = this.db.query("UPDATE ops SET state = ?, ack_cursor = ?, error = NULL WHERE op_id = ? AND share = ?")
      for (const a of [...(answer.applied || []), ...(answer.duplicates || [])]) ack.run(ACKED, a.cursor, a.op_id, share.name)
      const reject = this.db.query("UPDATE ops SET state = ?, error = ? WHERE op_id = ? AND share = ?")
      for (const r of answer.rejected || []) reject.run(FAILED, `rejected: ${r.reason}`, r.op_id, share.name)
      share.cursor = Math.max(share.cursor, Number(answer.cursor) || 0)
      share.last_error = null
      this.db.query("UPDATE shares SET cursor = ?, last_error = NULL, updated_at = ? WHERE name = ?").run(share.cursor, Date.now(), share.name)
    })
  }

  /** A transient failure: the same batch is due again after the backoff (or Retry-After). */
  retryLater(share, batch, error, { now = Date.now(), retryAfterMs = null } = {}) {
    const attempts = batch.attempts + 1
    const due = now + Math.max(retryAfterMs ?? 0, backoffDelay(attempts))
    this.tx(() => {
      const update = this.db.query("UPDATE ops SET attempts = ?, next_retry_at = ?, error = ? WHERE op_id = ?")
      for (const id of batch.opIds) update.run(attempts, due, error, id)
      this.setError(share, error)
    })
    return due
  }

  /** 413: the batch was refused whole (nothing applied), so it may be cut in two. The first half
   * becomes a new fixed batch, the rest goes back to pending. A single op too large fails. */
  splitBatch(share, batch, error) {
    return this.tx(() => {
      if (batch.opIds.length <= 1) {
        this.db.query("UPDATE ops SET state = ?, error = ? WHERE op_id = ?").run(FAILED, error, batch.opIds[0])
        return false
      }
      const half = Math.ceil(batch.opIds.length / 2)
      const head = batch.opIds.slice(0, half)
      const chosen = batchIdOf(head)
      const toHead = this.db.query("UPDATE ops SET batch_id = ? WHERE op_id = ?")
      for (const id of head) toHead.run(chosen, id)
      const back = this.db.query("UPDATE ops SET state = ?, batch_id = NULL WHERE op_id = ?")
      for (const id of batch.opIds.slice(half)) back.run(PENDING, id)
      return true
    })
  }

  failBatch(share, batch, error) {
    this.tx(() => {
      const update = this.db.query("UPDATE ops SET state = ?, error = ? WHERE op_id = ?")
      for (const id of batch.opIds) update.run(FAILED, error, id)
      this.setError(share, error)
    })
  }

  /** After a redeem: if the server is behind what it acknowledged (it lost data), every op
   * acknowledged after its cursor is sent again, in fresh batches. Returns how many. */
  rewind(share, serverCursor) {
    return this.tx(() => {
      if (serverCursor >= share.cursor) return 0
      const lost = this.db
        .query("UPDATE ops SET state = ?, batch_id = NULL, ack_cursor = NULL WHERE share = ? AND state = ? AND ack_cursor > ?")
        .run(PENDING, share.name, ACKED, serverCursor).changes
      this.db.query("UPDATE ops SET state = ?, batch_id = NULL WHERE share = ? AND state = ?").run(PENDING, share.name, IN_FLIGHT)
      share.cursor = serverCursor
      this.db.query("UPDATE shares SET cursor = ? WHERE name = ?").run(serverCursor, share.name)
      return lost
    })
  }

  // -- reporting -------------------------------------------------------------------------------

  counts(share) {
    const counts = { [PENDING]: 0, [IN_FLIGHT]: 0, [ACKED]: 0, [FAILED]: 0 }
    for (const r of this.db.query("SELECT state, COUNT(*) AS n FROM ops WHERE share = ? GROUP BY state").all(share.name)) {
      counts[r.state] = r.n
    }
    return counts
  }

  /** Active shares with something left to send. */
  sharesWithWork() {
    return this.db
      .query(
        "SELECT DISTINCT s.* FROM shares s JOIN ops o ON o.share = s.name WHERE s.status = 'active' AND o.state IN (?, ?) ORDER BY s.name",
      )
      .all(PENDING, IN_FLIGHT)
  }
}
