// Debian's Chromium under playwright-core (which downloads no browser), and the failure helpers
// both browser scripts use.
import { createHmac } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

/** axe-core's source, evaluated in a page by the driver (the page's CSP stays on). */
const axeSource = await readFile(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

export const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

/** Ends the run: the message on stderr, exit status 1. */
export const fail = async (message) => {
  console.error(message);
  await browser.close();
  process.exit(1);
};

/** Fails the run unless `condition` holds. */
export const expect = async (condition, message) => { if (!condition) await fail(message); };

/**
 * A new page that records what the pages' Content-Security-Policy refused (inline script or
 * style, eval): `page.refused`, which must stay empty.
 */
export const newPage = async () => {
  const page = await browser.newPage();
  page.refused = [];
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy/i.test(message.text())) page.refused.push(message.text());
  });
  return page;
};

/**
 * Fails the run if axe-core finds a violation of impact serious or critical on `page` as it
 * stands (WCAG 2 A and AA rules, and best practices), naming `what` and where.
 */
export const accessible = async (page, what) => {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const serious = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (serious.length > 0) {
    const found = serious.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
    await fail(`accessibility of ${what}:\n${found.join("\n")}`);
  }
};

/** Signs `page` in with a password (no second factor asked), landing on the console. */
export const signIn = async (page, base, email, password) => {
  await page.goto(`${base}/sign-in`);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);
};

/** RFC 6238's code for `secret` (base32) at time step `step` (SHA-1, 6 digits). */
export const totp = (secret, step) => {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "")) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
};

/** A small chat completion at `base` with API key `key`: the status and the JSON body. */
export const chat = async (base, key) => {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "grok-test", messages: [{ role: "user", content: "Hello from the console" }], max_tokens: 20 }),
  });
  return { status: response.status, body: await response.json() };
};
