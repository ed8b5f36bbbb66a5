// Joining a team from the invitation mail's link in Debian's Chromium: signed out, the page
// says to sign in with the invited address, and signing in comes back to it; signed in, the token moves from the link into the
// form (and out of the address bar), the page lists the invitation, and Accept joins the team.
// Usage: node join.mjs <base> <email> <password> <token>
import { accessible, browser, expect, fail, newPage } from "./browser.mjs";

const [base, email, password, token] = process.argv.slice(2);
try {
  const page = await newPage();
  await page.goto(`${base}/accept-invitation#token=${token}`);
  await expect(await page.isVisible("text=Sign in with the address the invitation was sent to"), "no advice when signed out");
  await accessible(page, "the invitation page, signed out");
  await page.click("a:has-text('Sign in')");
  await page.fill("#email", email);
  await page.fill("#password", password);
  // Signed in, back on the page, which lists the invitation.
  await Promise.all([page.waitForURL(`${base}/accept-invitation`), page.click("button[type=submit]")]);
  await expect(await page.isVisible("td:has-text('Member')"), "back from signing in, the invitation is not listed");
  await page.goto(`${base}/console`);
  const before = await page.$$eval("#team option", (options) => options.length);

  await page.goto(`${base}/accept-invitation#token=${token}`);
  await expect(page.url() === `${base}/accept-invitation`, `the token stayed in the address: ${page.url()}`);
  await expect((await page.inputValue("#token")) === token, "the token is not in the form");
  await expect(await page.isVisible("td:has-text('Member')"), "the invitation is not listed");
  await accessible(page, "the invitation page");
  await Promise.all([page.waitForURL(/\/console\?team=/), page.click("button:has-text('Accept the invitation')")]);
  const after = await page.$$eval("#team option", (options) => options.length);
  await expect(after === before + 1, `teams before ${before}, after ${after}`);
  await expect(page.refused.length === 0, `the CSP refused: ${page.refused}`);
  console.log(JSON.stringify({ joined: page.url() }));
  await browser.close();
} catch (error) {
  await fail(String(error.stack || error));
}
