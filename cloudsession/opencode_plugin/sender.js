// Delivery: drain the outbox to the share server over REST (docs/protocol.md).
//
// The JavaScript twin of cloudsession/client/sync.py. Per share: create it with the session ID if
// the outbox holds no secret yet (create is idempotent and answers the current secret), redeem it
// once per process and after every reconnect (rewinding when the server is behind what it
// acknowledged), then send batch after batch. No answer, 5xx, 408 or 429: the same batch again
// after a backoff (Retry-After honoured) and a redeem. 403: the secret was rotated; create again,
// redeem, resend. 404/410: the share is gone; its undelivered ops fail and nothing more is sent.
// 413: the batch is split. 400: the batch can never be accepted; it fails.
//
// Secrets travel only in request bodies and are never logged: errors carry statuses and server
// messages, never a request.

import { FAILED } from "./outbox.js"

export class HttpError extends Error {
  constructor(status, message, retryAfterMs = null) {
    super(message)
    this.status = status
    this.retryAfterMs = retryAfterMs
  }
  get retryable() {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500
  }
}

export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return null
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000)
  const date = Date.parse(value)
  return Number.isFinite(date) ? Math.max(0, date - now) : null
}

export class Sender {
  /**
   * @param {import("./outbox.js").Outbox} outbox
   * @param {{batchSize?: number, requestTimeoutMs?: number, adminKey?: string, log?: (level: string, message: string) => void}} options
   */
  constructor(outbox, { batchSize = 100, requestTimeoutMs = 10000, adminKey = null, log = () => {} } = {}) {
    this.outbox = outbox
    this.batchSize = batchSize
    this.requestTimeoutMs = requestTimeoutMs
    this.adminKey = adminKey
    this.log = log
    this.redeemed = new Set() // share names redeemed since the last reconnect
  }

  async post(server, path, body, deadline) {
    const headers = { "content-type": "application/json" }
    if (this.adminKey) headers["x-opencode-share-key"] = this.adminKey
    const budget = Math.max(1, Math.min(this.requestTimeoutMs, (deadline ?? Infinity) - Date.now()))
    let response
    try {
      response = await fetch(server + path, { method: "POST", headers, body, signal: AbortSignal.timeout(budget) })
    } catch (error) {
      throw new HttpError(0, `no answer (${error?.code || error?.name || "error"})`)
    }
    const text = await response.text().catch(() => "")
    if (!response.ok) {
      let message = `HTTP ${response.status}`
      try {
        const parsed = JSON.parse(text)
        const detail = typeof parsed.error === "string" ? parsed.error : parsed.error?.message
        if (detail) message += `: ${String(detail).slice(0, 200)}`
      } catch {}
      throw new HttpError(response.status, message, parseRetryAfter(response.headers.get("retry-after")))
    }
    try {
      return JSON.parse(text)
    } catch {
      throw new HttpError(502, "the server's answer is not JSON")
    }
  }

  async create(share, deadline) {
    const answer = await this.post(share.server, "/api/share", JSON.stringify({ sessionID: share.session_id }), deadline)
    this.outbox.saveCredentials(share, { share_id: answer.id, secret: answer.secret, url: answer.url, epoch: share.epoch })
    return answer
  }

  /** Make sure the share exists and we hold its current capability; learn its cursor. */
  async connect(share, deadline) {
    if (!share.secret) await this.create(share, deadline)
    for (let i = 0; i < 3; i++) {
      let redeemed
      try {
        redeemed = await this.post(share.server, `/api/share/${share.share_id}/redeem`, JSON.stringify({ secret: share.secret }), deadline)
      } catch (error) {
        if (error.status === 403) {
          await this.create(share, deadline) // rotated: the session ID gets the current secret
          continue
        }
        throw error
      }
      if (redeemed.capabilityEpoch !== share.epoch) {
        this.outbox.saveCredentials(share, { share_id: redeemed.id, secret: share.secret, url: redeemed.url, epoch: redeemed.capabilityEpoch })
      }
      const lost = this.outbox.rewind(share, redeemed.cursor)
      if (lost > 0) this.log("warn", `share ${share.share_id}: the server lost ${lost} acknowledged changes; sending them again`)
      this.redeemed.add(share.name)
      return redeemed
    }
    throw new HttpError(403, "the share refuses our secret even after re-creating it")
  }

  gone(share, error) {
    const failed = this.outbox.markFailed(share, error.message)
    this.log("warn", `share ${share.share_id || "(new)"} of session ${share.session_id} is gone (${error.message}); ${failed} undelivered changes dropped`)
  }

  /**
   * Send what the share has pending until it is drained, the deadline passes or a transient
   * failure asks to wait. Returns {done: true} or {done: false, retryAt} (epoch ms).
   */
  async drain(share, deadline = Infinity) {
    let refreshes = 0
    while (Date.now() < deadline) {
      if (share.status === FAILED) return { done: true }
      const batch = this.outbox.nextBatch(share, this.batchSize)
      if (!batch) return { done: true }
      if (batch.next_retry_at > Date.now()) return { done: false, retryAt: batch.next_retry_at }
      try {
        if (!this.redeemed.has(share.name)) await this.connect(share, deadline)
        const body = `{"secret":${JSON.stringify(share.secret)},"epoch":${Number(share.epoch)},"ops":${batch.opsJSON}}`
        const answer = await this.post(share.server, `/api/share/${share.share_id}/ops`, body, deadline)
        this.outbox.recordAnswer(share, batch, answer)
        refreshes = 0
      } catch (error) {
        if (!(error instanceof HttpError)) throw error
        if (error.retryable) {
          this.redeemed.delete(share.name) // a reconnect: redeem before the resend
          const retryAt = this.outbox.retryLater(share, batch, error.message, { retryAfterMs: error.retryAfterMs })
          return { done: false, retryAt }
        }
        if (error.status === 403) {
          this.redeemed.delete(share.name)
          if (refreshes < 3) {
            refreshes += 1
            await this.create(share, deadline).catch(() => {})
            continue
          }
          // Still refused: keep the changes and try again later rather than dropping them.
          return { done: false, retryAt: this.outbox.retryLater(share, batch, error.message) }
        }
        if (error.status === 404 || error.status === 410) {
          this.gone(share, error)
          return { done: true }
        }
        if (error.status === 413) {
          this.outbox.splitBatch(share, batch, error.message)
          continue
        }
        this.outbox.failBatch(share, batch, error.message)
        this.log("warn", `share ${share.share_id}: a batch was refused (${error.message})`)
      }
    }
    return { done: false, retryAt: Date.now() }
  }
}
