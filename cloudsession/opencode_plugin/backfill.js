// Backfill: what a session already holds when the plugin starts sharing it.
//
// Events only report changes. A session shared mid-way (the user runs /share after a few
// messages, or the plugin is installed while sessions exist, or `share: auto` meets an old
// session) would otherwise reach the share with only what changes from then on. So the first time
// a process shares a session, the plugin reads the session, its messages with their parts and its
// diff through opencode's own client API, and hands them to the outbox (Outbox.backfill), which
// records only what the outbox does not already hold in that form: a second backfill of an
// unchanged session sends nothing, and a pending op of the same entity takes the newer state in
// place (coalesced, like every other change).
//
// Never called during plugin start-up (opencode waits for its plugins; a client call then
// deadlocks): only from an event handler.

/** Unwrap an @opencode-ai/sdk answer ({data} or {error}); null when the call is not available. */
async function call(fn, options) {
  if (typeof fn !== "function") return null
  const answer = await fn(options)
  if (answer && typeof answer === "object" && "error" in answer && answer.error) {
    const error = answer.error
    throw new Error(`opencode answered ${answer.response?.status || "an error"}: ${error?.data?.message || error?.message || error?.name || "unknown"}`)
  }
  return answer && typeof answer === "object" && "data" in answer ? answer.data : answer
}

/** The session, its messages ([{info, parts}]) and its diff, read through the plugin's client. */
export async function readSession(client, sessionID) {
  const session = client?.session
  if (!session) throw new Error("opencode's client has no session API")
  const options = { path: { id: sessionID } }
  const [info, messages, diff] = await Promise.all([
    call(session.get?.bind(session), options),
    call(session.messages?.bind(session), options),
    call(session.diff?.bind(session), options).catch(() => null), // optional: older servers have no diff route
  ])
  return { info, messages: Array.isArray(messages) ? messages : [], diff }
}

/** Sync items for a session's current state, in the order the share should learn them: the
 * session, then each message followed by its parts, then the diff. */
export function itemsOf(sessionID, { info, messages, diff }) {
  const items = []
  if (info && info.id === sessionID) items.push({ type: "session", data: info })
  for (const entry of messages || []) {
    const message = entry?.info
    if (!message?.id || (message.sessionID && message.sessionID !== sessionID)) continue
    items.push({ type: "message", data: message })
    for (const part of entry.parts || []) {
      if (part?.id) items.push({ type: "part", data: part })
    }
  }
  if (Array.isArray(diff)) items.push({ type: "session_diff", data: diff })
  return items
}
