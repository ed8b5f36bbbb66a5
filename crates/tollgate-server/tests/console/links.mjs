// The pages account mails link to, in Debian's Chromium: one step per run, as the mail arrives
// in between. Usage:
//   node links.mjs verify <base> <token>
//   node links.mjs forgot <base> <email>
//   node links.mjs reset  <base> <token> <email> <new password>
//   node links.mjs change <base> <token>   (confirm a new address)
//   node links.mjs stop   <base> <token>   (stop a change from the old address)
import { accessible, browser, expect, fail, newPage } from "./browser.mjs";

const [step, base, ...rest] = process.argv.slice(2);
try {
  const page = await newPage();
  if (step === "verify") {
    const [token] = rest;
    await page.goto(`${base}/verify-email#token=${token}`);
    // The token moved into the form and out of the address bar; nothing is spent before the press.
    await expect(page.url() === `${base}/verify-email`, `the token stayed in the address: ${page.url()}`);
    await expect((await page.inputValue("#token")) === token, "the token is not in the form");
    await accessible(page, "the verify-email page");
    await page.click("button:has-text('Verify my address')");
    await page.waitForSelector("text=is verified.");
  } else if (step === "forgot") {
    const [email] = rest;
    await page.goto(`${base}/sign-in`);
    await Promise.all([page.waitForURL(`${base}/forgot-password`), page.click("text=Forgot your password?")]);
    await page.fill("#email", email);
    await page.click("button:has-text('Send the link')");
    await page.waitForSelector("text=a link to reset it is on its way");
  } else if (step === "reset") {
    const [token, email, password] = rest;
    await page.goto(`${base}/reset-password#token=${token}`);
    // A weak password: refused with the reason, and the link still works.
    await page.fill("#password", "bbbbbbbbbbbbbbbb");
    const [weak] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${base}/reset-password` && r.request().method() === "POST"),
      page.click("button:has-text('Set the password')"),
    ]);
    await expect(weak.status() === 400, `a weak password answered ${weak.status()}`);
    await page.fill("#password", password);
    await page.click("button:has-text('Set the password')");
    await page.waitForSelector("text=Your password was changed.");
    await Promise.all([page.waitForURL(`${base}/sign-in`), page.click("a:has-text('Sign in')")]);
    await page.fill("#email", email);
    await page.fill("#password", password);
    await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);
  } else if (step === "change" || step === "stop") {
    const [token] = rest;
    const path = step === "change" ? "confirm-email-change" : "report-email-change";
    await page.goto(`${base}/${path}#token=${token}`);
    await expect(page.url() === `${base}/${path}`, `the token stayed in the address: ${page.url()}`);
    await page.click(step === "change" ? "button:has-text('Confirm the new address')" : "button:has-text('Stop the change')");
    await page.waitForSelector(step === "change" ? "text=The account's address was changed." : "text=The change was stopped");
  } else {
    await fail(`unknown step ${step}`);
  }
  await expect(page.refused.length === 0, `refused by the CSP: ${page.refused.join("; ")}`);
  console.log("ok");
} catch (error) {
  await fail(String(error && error.stack || error));
}
await browser.close();
