#!/usr/bin/env node
// Signs a webhook body as GitHub does, with the official @octokit/webhooks-methods, and prints
// {"headers": {...}} as JSON. usage: node sign.mjs github --secret S --body-file F
import { readFileSync } from "node:fs";
import { sign } from "@octokit/webhooks-methods";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  if (i < 0 || i + 1 >= args.length) {
    console.error(`sign.mjs: ${name} is required`);
    process.exit(2);
  }
  return args[i + 1];
};
if (args[0] !== "github") {
  console.error(`sign.mjs: unknown provider ${args[0]}`);
  process.exit(2);
}
const body = readFileSync(opt("--body-file"), "utf8");
const signature = await sign(opt("--secret"), body);
console.log(
  JSON.stringify({
    headers: {
      "X-Hub-Signature-256": signature,
      "X-GitHub-Event": "ping",
      "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    },
  }),
);
