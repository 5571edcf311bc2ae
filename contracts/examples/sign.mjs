// Signing volume-agent requests from Node.js, as contracts/auth.py specifies (no volume-agent code needed).
//   npm install @nats-io/nkeys @nats-io/transport-node
//   node sign.mjs nats://127.0.0.1:4222 web-1 ~/.config/volume-agent/me.seed list '{}'
// The seed's public key must have an [[identity]] in the agent's policy file, with a role that may run the op.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fromSeed } from "@nats-io/nkeys";
import { connect, headers } from "@nats-io/transport-node";

const enc = new TextEncoder();

/** The Vol-Key, Vol-Time and Vol-Sig headers for `data` published on `subject` (with Nats-Msg-Id `msgId`). */
export function sign(keys, subject, data, msgId = "") {
  const time = (BigInt(Date.now()) * 1_000_000n).toString(); // Unix time in nanoseconds
  const digest = createHash("sha256").update(data).digest("hex");
  const signed = enc.encode(`volume-agent-sig-v1\n${subject}\n${time}\n${msgId}\n${digest}`);
  const h = headers();
  h.set("Vol-Key", keys.getPublicKey());
  h.set("Vol-Time", time);
  h.set("Vol-Sig", Buffer.from(keys.sign(signed)).toString("base64url")); // unpadded base64url
  if (msgId) h.set("Nats-Msg-Id", msgId); // a durable command (vol.cmd.<host>.<op>): its id is signed too
  return h;
}

const [url, host, seedFile, op = "list", body = "{}", name] = process.argv.slice(2);
const keys = fromSeed(enc.encode(readFileSync(seedFile, "utf8").trim()));
// With NATS permissions per identity, replies come to the identity's own inbox prefix.
const nc = await connect({ servers: url, ...(name ? { inboxPrefix: `_INBOX_${name}` } : {}) });
const subject = `vol.req.${host}.${op}`;
const data = enc.encode(body);
const reply = await nc.request(subject, data, { headers: sign(keys, subject, data), timeout: 30_000 });
console.log(reply.string()); // the envelope: {"id":…,"host":…,"op":…,"ok":…,"caller":"<your name>",…}
await nc.close();
