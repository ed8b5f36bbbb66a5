// Debian's Chromium under playwright-core (which downloads no browser), and the failure helpers
// both browser scripts use.
import { chromium } from "playwright-core";

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
