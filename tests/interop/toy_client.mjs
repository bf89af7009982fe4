// Drives the toy RPC target (tests/rpc_toy.py) with the real npm capnweb client to check the
// generic protocol: special values both ways, targets returned by reference, callbacks over
// WebSocket. Prints one JSON line per step.
// Usage: node toy_client.mjs <capnweb|capnweb04> <base-url>
import { createRequire } from "node:module";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const [pkg, base] = process.argv.slice(2);
const capnweb = require(pkg);
globalThis.WebSocket ??= require("ws");

const url = `${base}/rpc`;
const batch = () => capnweb.newHttpBatchRpcSession(url);
const out = (step, value) => console.log(JSON.stringify({ step, value }));
const describe = (v) => ({
  date: v.d instanceof Date ? v.d.getTime() : null,
  bigint: typeof v.b === "bigint" ? v.b.toString() : typeof v.b,
  undefinedKept: "u" in v && v.u === undefined,
  nested: v.arr,
  bytes: v.bytes instanceof Uint8Array ? Array.from(v.bytes) : typeof v.bytes,
  inf: v.inf === Infinity && v.ninf === -Infinity,
  nan: Number.isNaN(v.nan),
  error: v.err instanceof RangeError ? [v.err.name, v.err.message] : String(v.err),
  nul: v.nul,
});

const value = {
  d: new Date(1757214689123),
  b: 12345678901234567890n,
  u: undefined,
  arr: [1, [2, [3]], { a: [] }],
  bytes: new Uint8Array([1, 2, 3, 250]),
  inf: Infinity,
  ninf: -Infinity,
  nan: NaN,
  err: new RangeError("boom"),
  nul: null,
};
out("echo_types", describe(await batch().echo(value)));

// A target returned by reference, used by pipelining within the same batch.
{
  const api = batch();
  const handle = api.handle("h1");
  const made = api.make("x");
  const [info, joined] = await Promise.all([handle.info(), api.join(made.id, made.list[1][0])]);
  out("pipelined_target", { info, joined });
}

try {
  await batch().fail("nope");
} catch (e) {
  out("error", [e instanceof RangeError, e.name, e.message]);
}

// Over WebSocket the server can call back into the client, and stubs live across calls.
{
  const api = capnweb.newWebSocketRpcSession(url.replace(/^http/, "ws"));
  const answer = await api.callback((msg) => `client got ${msg}`, "ping");
  const handle = await api.handle("kept");
  const infos = [await handle.info(), await handle.info()];
  handle[Symbol.dispose]();
  out("websocket", { answer, infos, pair: await api.pair("only") });
  api[Symbol.dispose]();
}
