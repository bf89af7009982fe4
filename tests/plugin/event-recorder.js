// A test plugin (never shipped): writes every event opencode hands to plugins, one JSON line each,
// to the file named by its `file` option, with what the shipped plugin's own parser
// (cloudsession/opencode_plugin/events.js, from the `pluginDir` option) makes of it. Once per
// session, at its first session.idle, it also records the answers of the client calls the
// shipped plugin's backfill relies on (session.get, session.messages, session.diff).
// tests/test_opencode_runs.py checks the recording against tests/plugin/event-contract.json.
import { appendFileSync } from "node:fs"

export const EventRecorder = async (input, options = {}) => {
  const { HANDLED, itemOf } = await import(`${options.pluginDir}/events.js`)
  const write = (record) => appendFileSync(options.file, JSON.stringify(record) + "\n")
  const probed = new Set()
  const probes = new Set()
  const probe = async (sessionID) => {
    const options = { path: { id: sessionID } }
    const answers = {}
    for (const name of ["get", "messages", "diff"]) {
      try {
        const answer = await input.client.session[name](options)
        answers[name] = { data: answer?.data ?? null, error: answer?.error ?? null }
      } catch (error) {
        answers[name] = { data: null, error: String(error?.message || error) }
      }
    }
    write({ client: answers, sessionID })
  }
  return {
    event: async ({ event }) => {
      const found = HANDLED.has(event?.type) ? itemOf(event) : null
      write({ event, handled: HANDLED.has(event?.type), item: found ? found.item.type : null })
      const sessionID = event?.properties?.sessionID
      if (event?.type === "session.idle" && sessionID && !probed.has(sessionID)) {
        probed.add(sessionID)
        const work = probe(sessionID)
        probes.add(work)
        work.finally(() => probes.delete(work))
      }
    },
    dispose: async () => {
      await Promise.allSettled([...probes])
    },
  }
}
