// Drives /rpc/share with the real npm capnweb client and prints one JSON line per scenario step.
// Usage: node share_client.mjs <capnweb|capnweb04> <base-url> <scenario> [share-key]
// Packages are resolved from ../node (the test clients' package.json), so no NODE_PATH is needed.
import { createRequire } from "node:module";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const [pkg, base, scenario, key] = process.argv.slice(2);
const capnweb = require(pkg);
// Node 20 has no global WebSocket, and capnweb reads WebSocket.CONNECTING: fill it from `ws`.
globalThis.WebSocket ??= require("ws");

const url = `${base}/rpc/share`;
const headers = key ? { "x-opencode-share-key": key } : {};
// Headers must ride on a Request object: the options argument does not carry them (a client trap).
const batch = () => capnweb.newHttpBatchRpcSession(new Request(url, { headers }));
const socket = () => {
  const WS = require("ws");
  return capnweb.newWebSocketRpcSession(new WS(url.replace(/^http/, "ws"), { headers }));
};
const out = (step, value) => console.log(JSON.stringify({ step, value }));
const failure = (e) => ({ error: { name: e?.name, message: e?.message ?? String(e) } });
const settle = async (promise) => {
  try {
    return await promise;
  } catch (e) {
    return failure(e);
  }
};
const session = (sid, title) => [{ type: "session", data: { id: sid, title, time: { created: 1, updated: 2 } } }];
const unique = (name) => `ses_${name}_${pkg}_${Date.now()}_${Math.floor(Math.random() * 1e9)}`;

const scenarios = {
  async create() {
    const sid = unique("create");
    out("create", await settle(batch().createShare(sid)));
    out("again", await settle(batch().createShare(sid)));
    out("initial", await settle(batch().createShare(unique("initial"), session("x", "with initial data"))));
  },
  async sync() {
    const sid = unique("sync");
    const share = await batch().createShare(sid);
    out("create", share);
    out("sync", await settle(batch().syncShare(share.id, share.secret, session(sid, "synced"))));
    out("sync2", await settle(batch().syncShare(share.id, share.secret, [{ type: "message", data: { id: "m1", role: "user", time: { created: 1 } } }])));
  },
  async pipelined() {
    // One batch: the second call's arguments are the first call's .id and .secret.
    const sid = unique("pipe");
    const api = batch();
    const created = api.createShare(sid);
    const synced = api.syncShare(created.id, created.secret, session(sid, "pipelined"));
    const [c, s] = await Promise.all([settle(created), settle(synced)]);
    out("create", c);
    out("sync", s);
  },
  async pipelined_unawaited() {
    const sid = unique("pipe2");
    const api = batch();
    const created = api.createShare(sid);
    out("sync", await settle(api.syncShare(created.id, created.secret, session(sid, "only the sync awaited"))));
    out("create_again", await settle(batch().createShare(sid)));
  },
  async websocket() {
    const api = socket();
    const sid = unique("ws");
    const share = await settle(api.createShare(sid));
    out("create", share);
    out("sync", await settle(api.syncShare(share.id, share.secret, session(sid, "over ws"))));
    const sid2 = unique("ws_pipe");
    const created = api.createShare(sid2);
    const results = await Promise.all([
      settle(api.syncShare(created.id, created.secret, session(sid2, "pipelined over ws"))),
      settle(api.syncShare(share.id, "wrong-secret", [])),
      settle(api.syncShare(share.id, share.secret, [])),
    ]);
    out("concurrent", results);
    out("delete", await settle(api.deleteShare(share.id, share.secret)));
    out("delete_again", await settle(api.deleteShare(share.id, share.secret)));
    api[Symbol.dispose]();
  },
  async errors() {
    const share = await batch().createShare(unique("err"));
    out("wrong_secret", await settle(batch().syncShare(share.id, "wrong-secret", [])));
    out("unknown_share", await settle(batch().syncShare("nope", "bad", [])));
    out("unknown_method", await settle(batch().noSuchMethod(1)));
    out("probe", await settle(batch().probeValue({ nested: { x: 7 } })));
    out("bad_items", await settle(batch().syncShare(share.id, share.secret, [{ type: "weird", data: 1 }])));
    out("bad_session_id", await settle(batch().createShare(42)));
    out("delete_wrong_secret", await settle(batch().deleteShare(share.id, "bad")));
    out("delete", await settle(batch().deleteShare(share.id, share.secret)));
  },
  async auth() {
    out("create", await settle(batch().createShare(unique("auth"))));
    const api = socket();
    out("ws_create", await settle(api.createShare(unique("auth_ws"))));
    api[Symbol.dispose]();
  },
};

await scenarios[scenario]();
