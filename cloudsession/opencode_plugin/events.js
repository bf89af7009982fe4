// opencode bus events -> sync items (the @opencode-ai/sdk v2 Event shapes of opencode 1.18.33).
// message.part.delta (streaming pieces) is ignored: the final message.part.updated has the full text.

export const HANDLED = new Set(["session.created", "session.updated", "message.updated", "message.part.updated", "session.diff"])

/** The sync item an event carries, or null. */
export function itemOf(event) {
  const p = event?.properties || {}
  switch (event?.type) {
    case "session.created":
    case "session.updated":
      return p.info ? { sessionID: p.info.id || p.sessionID, item: { type: "session", data: p.info } } : null
    case "message.updated":
      return p.info ? { sessionID: p.info.sessionID || p.sessionID, item: { type: "message", data: p.info } } : null
    case "message.part.updated":
      return p.part ? { sessionID: p.part.sessionID || p.sessionID, item: { type: "part", data: p.part } } : null
    case "session.diff":
      return Array.isArray(p.diff) && p.sessionID ? { sessionID: p.sessionID, item: { type: "session_diff", data: p.diff } } : null
    default:
      return null
  }
}
