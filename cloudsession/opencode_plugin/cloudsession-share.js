// cloudsession-share: an opencode plugin that shares sessions durably with a cloudsession server.
//
// Every change opencode reports (session.updated, message.updated, message.part.updated,
// session.diff) becomes an op in a SQLite outbox (outbox.js) before anything is sent; a
// background loop delivers the ops through the durable protocol (sender.js, docs/protocol.md).
// Whatever is not delivered when opencode exits is delivered by the next opencode start.
// The first time a process shares a session, what the session already holds (messages and parts
// from before /share, or from before the plugin was installed) is read through opencode's client
// and recorded too (backfill.js), so a session shared mid-way arrives whole.
//
// Options (the second element of the config entry ["file:///.../cloudsession-share.js", {...}]):
//   server      the share server's URL (default: the config's enterprise.url)
//   outbox      the outbox file (default: <opencode data dir>/cloudsession-outbox.sqlite)
//   share       "auto" to share every session (default: opencode's own `share` setting, and
//               sessions the user shared with /share)
//   flushBudgetMs  how long `dispose` may spend delivering (default 3000)
//   debounceMs  how long to gather changes before a send (default 250)
//
// Which sessions: none when the effective `share` setting is "disabled"; every session when it is
// "auto"; otherwise the sessions that carry share.url (the user ran /share) and those the outbox
// already knows.
//
// It never awaits a `client.*` call during start-up (opencode waits for plugins to load) and
// never logs a secret.

import { Outbox, defaultOutboxPath, entityOf, FAILED, leaseOwner } from "./outbox.js"
import { Sender } from "./sender.js"
import { HANDLED, itemOf } from "./events.js"
import { itemsOf, readSession } from "./backfill.js"

function createState(input, options) {
  const state = {
    server: options.server ? String(options.server).replace(/\/+$/, "") : null,
    shareMode: options.share || null,
    outbox: null,
    sender: null,
    owner: leaseOwner(),
    timer: null,
    timerAt: 0,
    flushing: null,
    disposed: false,
    sharedSessions: new Set(),
    modelsSent: new Set(),
    backfilled: new Set(), // sessions whose existing state this process has read (or is reading)
    touched: new Map(), // session -> entities changed by events while its backfill reads
    backfills: new Set(), // backfills in progress (dispose waits for them within its budget)
    debounceMs: Number(options.debounceMs ?? 250),
    flushBudgetMs: Number(options.flushBudgetMs ?? 3000),
    leaseMs: Number(options.leaseMs ?? 30000),
  }
  state.log = (level, message) => {
    // Not awaited: a log line must never hold up opencode.
    try {
      input.client?.app?.log?.({ body: { service: "cloudsession-share", level, message } })?.catch?.(() => {})
    } catch {}
  }
  state.open = () => {
    if (!state.outbox) {
      state.outbox = new Outbox(options.outbox || defaultOutboxPath())
      state.sender = new Sender(state.outbox, { adminKey: options.key || process.env.SESSIONS_RPC_SHARED_KEY || null, log: state.log })
    }
    return state.outbox
  }
  return state
}

function wanted(state, sessionID, item) {
  if (!state.server || state.shareMode === "disabled") return false
  if (state.shareMode === "auto") return true
  if (item.type === "session" && item.data?.share?.url) state.sharedSessions.add(sessionID)
  if (state.sharedSessions.has(sessionID)) return true
  const known = state.open().findShare(state.server, sessionID)
  if (known && known.status !== FAILED) {
    state.sharedSessions.add(sessionID)
    return true
  }
  return false
}

function schedule(state, at) {
  if (state.disposed) return
  const when = Math.max(at, Date.now())
  // A timer already due earlier stays; a backoff pushed further out is never pulled in by new events.
  if (state.timer && state.timerAt <= when) return
  if (state.timer) clearTimeout(state.timer)
  state.timerAt = when
  state.timer = setTimeout(() => {
    state.timer = null
    flush(state).catch((error) => state.log("error", `delivery failed: ${error?.message || error}`))
  }, when - Date.now())
  state.timer.unref?.()
}

/** Deliver every share with work, while this process holds the lease. */
async function flush(state, deadline = Infinity) {
  if (state.flushing) {
    state.again = true // changes arrived while sending: look again when this round ends
    return state.flushing
  }
  state.again = false
  state.flushing = (async () => {
    const outbox = state.open()
    if (!outbox.acquireLease(state.owner, state.leaseMs)) {
      schedule(state, Date.now() + Math.min(state.leaseMs, 5000)) // another process sends; look again later
      return false
    }
    let next = Infinity
    for (const share of outbox.sharesWithWork()) {
      if (Date.now() >= deadline) break
      outbox.acquireLease(state.owner, state.leaseMs)
      const result = await state.sender.drain(share, deadline)
      if (!result.done) next = Math.min(next, result.retryAt)
    }
    if (next !== Infinity) schedule(state, next)
    else if ((state.again || outbox.sharesWithWork().length > 0) && deadline === Infinity) schedule(state, Date.now() + state.debounceMs)
    return next === Infinity
  })()
  try {
    return await state.flushing
  } finally {
    state.flushing = null
  }
}

async function dispose(state) {
  if (state.disposed) return
  const deadline = Date.now() + state.flushBudgetMs
  if (state.timer) clearTimeout(state.timer)
  state.timer = null
  try {
    if (state.server) {
      state.open()
      if (state.backfills.size > 0) await Promise.race([Promise.allSettled([...state.backfills]), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))])
      if (state.flushing) await Promise.race([state.flushing, new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))])
      // Ops waiting for a backoff get one more try now: whatever is left is sent by the next start.
      if (Date.now() < deadline) {
        for (const share of state.outbox.sharesWithWork()) state.outbox.db.query("UPDATE ops SET next_retry_at = 0 WHERE share = ? AND state IN ('pending','in_flight')").run(share.name)
        await flush(state, deadline)
      }
    }
  } catch (error) {
    state.log("error", `final delivery failed: ${error?.message || error}`)
  } finally {
    state.disposed = true
    try {
      state.outbox?.releaseLease(state.owner)
      state.outbox?.close()
    } catch {}
    state.outbox = null
  }
}

async function enqueueModel(state, input, share, message) {
  const key = `${share.name} ${message.providerID}/${message.modelID}`
  if (state.modelsSent.has(key)) return
  state.modelsSent.add(key)
  try {
    const answer = await input.client.config.providers()
    const providers = answer?.data?.providers || answer?.providers || []
    const provider = providers.find((p) => p.id === message.providerID)
    const model = provider?.models?.[message.modelID]
    if (model && state.outbox) {
      state.outbox.enqueue(share, { type: "model", data: [{ ...model, providerID: message.providerID, id: model.id || message.modelID }] })
    }
  } catch {
    state.modelsSent.delete(key)
  }
}

/** Read what the session already holds and record it (once per session and process). The entity of
 * the event that started it, and those of events arriving while the read is in flight, were
 * recorded from the events themselves: the read never replaces them. */
function startBackfill(state, input, sessionID, entity) {
  if (state.backfilled.has(sessionID) || !input.client?.session) return
  state.backfilled.add(sessionID)
  const touched = new Set([entity])
  state.touched.set(sessionID, touched)
  const work = (async () => {
    try {
      const found = await readSession(input.client, sessionID)
      if (state.disposed || !state.outbox) return
      const share = state.outbox.share(state.server, sessionID)
      if (share.status === FAILED) return
      const items = itemsOf(sessionID, found)
      const changed = state.outbox.backfill(share, items, touched)
      for (const item of items) {
        if (item.type === "message" && item.data.role === "assistant" && item.data.providerID && item.data.modelID) enqueueModel(state, input, share, item.data)
      }
      if (changed > 0) schedule(state, Date.now() + state.debounceMs)
    } catch (error) {
      state.backfilled.delete(sessionID) // try again with the session's next change
      state.log("warn", `could not read the existing state of a session: ${error?.message || error}`)
    } finally {
      state.touched.delete(sessionID)
    }
  })()
  state.backfills.add(work)
  work.finally(() => state.backfills.delete(work))
}

export const CloudsessionShare = async (input, options = {}) => {
  const state = createState(input, options || {})
  // Start-up: no client.* call is awaited here. Deliver what earlier runs left behind, soon.
  setTimeout(() => {
    if (state.server && !state.disposed) schedule(state, Date.now())
  }, 0).unref?.()
  return {
    config: async (config) => {
      if (!state.server && config?.enterprise?.url) state.server = String(config.enterprise.url).replace(/\/+$/, "")
      if (!state.shareMode && config?.share) state.shareMode = config.share
      if (state.server && !state.disposed) schedule(state, Date.now() + state.debounceMs)
    },
    event: async ({ event }) => {
      if (state.disposed || !HANDLED.has(event?.type)) return
      const found = itemOf(event)
      if (!found || !found.sessionID || !wanted(state, found.sessionID, found.item)) return
      try {
        const outbox = state.open()
        const share = outbox.share(state.server, found.sessionID)
        if (share.status === FAILED) return
        state.touched.get(found.sessionID)?.add(entityOf(found.item))
        outbox.enqueue(share, found.item)
        startBackfill(state, input, found.sessionID, entityOf(found.item))
        if (found.item.type === "message" && found.item.data?.role === "assistant" && found.item.data.providerID && found.item.data.modelID) {
          enqueueModel(state, input, share, found.item.data)
        }
        schedule(state, Date.now() + state.debounceMs)
      } catch (error) {
        state.log("error", `could not record a change: ${error?.message || error}`)
      }
    },
    dispose: () => dispose(state),
  }
}
