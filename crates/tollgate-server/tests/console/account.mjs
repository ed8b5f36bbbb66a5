// The account page in Debian's Chromium: rename, turn on two-factor authentication by scanning
// (reading) the key the page shows, a wrong code first; keep the recovery codes (copied and
// downloaded); sign out and in with the next step's code (a code is accepted once, so the
// script computes the next one instead of waiting); renew the recovery codes; turn TOTP off with
// one; delete the account and restore it by signing in. Prints what the server must check, as
// JSON. Usage: node account.mjs <base URL> <email> <password> <server's unix time> [screenshots]
import { readFile } from "node:fs/promises";
import { accessible, browser, expect, fail, newPage, signIn, totp } from "./browser.mjs";

const [base, email, password, now, shots] = process.argv.slice(2);

try {
  const page = await newPage();
  const step = Math.floor(Number(now) / 30);
  await signIn(page, base, email, password);

  // The account page, from the address in the top bar.
  await Promise.all([page.waitForURL(`${base}/account`), page.click(`header a:has-text('${email}')`)]);
  await accessible(page, "the Account page");
  await page.fill("#account-name", "Renamed Person");
  await page.click("#profile form[action='/account/name'] button[type=submit]");
  await page.waitForSelector("text=Your name was saved.");
  await expect((await page.inputValue("#account-name")) === "Renamed Person", "the name was not kept");
  // A blank name is refused next to the field.
  await page.fill("#account-name", "   ");
  await page.click("#profile form[action='/account/name'] button[type=submit]");
  await page.waitForSelector("#name-error");
  await expect((await page.getAttribute("#account-name", "aria-invalid")) === "true", "the field is not marked invalid");

  // Changing the address asks for the password; a wrong one is refused, the new address kept.
  await page.fill("#new-email", "careful.new@example.com");
  await page.fill("#email-password", "not the password");
  await page.click("button:has-text('Send a confirmation link')");
  await page.waitForSelector("#email-error");
  await expect((await page.inputValue("#new-email")) === "careful.new@example.com", "the refused form lost the address");

  // Turning on TOTP asks for the password again; the page shows a QR code rendered on the
  // server and the key to type.
  await page.fill("#totp-password", "not the password");
  await page.click("button:has-text('Set up an authenticator app')");
  await page.waitForSelector("#totp-error");
  await page.fill("#totp-password", password);
  await page.click("button:has-text('Set up an authenticator app')");
  await page.waitForSelector("img.qr");
  const drawn = await page.$eval("img.qr", (img) => img.complete && img.naturalWidth >= 200);
  await expect(drawn, "the QR code is not drawn");
  if (shots) await page.screenshot({ path: `${shots}/account-totp.png`, fullPage: true });
  await accessible(page, "the Account page enrolling TOTP");
  const secret = (await page.textContent("#totp-secret")).trim();
  // A wrong code: refused, the same key shown again.
  const right = totp(secret, step);
  await page.fill("#totp-code", right === "123456" ? "654321" : "123456");
  await page.click("button:has-text('Turn on')");
  await page.waitForSelector("#totp-error");
  await expect((await page.textContent("#totp-secret")).trim() === secret, "a new key after a wrong code");
  await page.fill("#totp-code", right);
  await page.click("button:has-text('Turn on')");
  await page.waitForSelector("#recovery-codes");
  const codes = (await page.textContent("#recovery-codes-text")).trim().split("\n").map((c) => c.trim());
  await expect(codes.length === 10, `${codes.length} recovery codes`);
  await expect(await page.isVisible("text=On."), "TOTP is not shown as on");
  // The codes download as a file holding every code.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("a:has-text('Download')")]);
  const file = await readFile(await download.path(), "utf8");
  await expect(codes.every((code) => file.includes(code)), "the downloaded file lacks codes");
  await expect(download.suggestedFilename() === "recovery-codes.txt", download.suggestedFilename());
  if (shots) await page.screenshot({ path: `${shots}/account-recovery-codes.png`, fullPage: true });
  await accessible(page, "the Account page with recovery codes");
  // Shown once: the page again has no codes.
  await page.goto(`${base}/account`);
  await expect(!(await page.isVisible("#recovery-codes")), "the codes are shown again");
  await expect(await page.isVisible("text=10 of 10 left."), "the codes left are not counted");

  // Signing in again asks for a code: the next step's (the one just used is spent).
  await Promise.all([page.waitForURL(`${base}/sign-in`), page.click("button:has-text('Sign out')")]);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click("button[type=submit]");
  await page.waitForSelector("#code");
  await accessible(page, "the second-factor page");
  await page.fill("#code", right);
  await page.click("button[type=submit]");
  await page.waitForSelector("[role=alert]");
  await page.fill("#code", totp(secret, step + 1));
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);

  // New recovery codes, proven with an old one; then TOTP off with a new one.
  await page.goto(`${base}/account`);
  await page.fill("#codes-code", codes[0]);
  await page.click("button:has-text('New recovery codes')");
  await page.waitForSelector("#recovery-codes");
  const renewed = (await page.textContent("#recovery-codes-text")).trim().split("\n").map((c) => c.trim());
  await expect(renewed.length === 10 && !renewed.includes(codes[1]), "the codes were not renewed");
  await page.fill("#disable-code", codes[1]);
  await page.click("button:has-text('Turn off')");
  await page.waitForSelector("#totp-error");
  await page.fill("#disable-code", renewed[0]);
  await page.click("button:has-text('Turn off')");
  await page.waitForSelector("text=no longer sign you in");
  await expect(await page.isVisible("text=Off."), "TOTP is not shown as off");

  // Delete the account (the password again), then sign in: the page offers to restore it.
  await page.fill("#delete-password", password);
  await page.click("button:has-text('Delete my account')");
  await page.waitForSelector("text=Your account was deleted.");
  await accessible(page, "the account-deleted page");
  await page.goto(`${base}/console`);
  await expect(page.url() === `${base}/sign-in`, "still signed in after deleting the account");
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click("button[type=submit]");
  await page.waitForSelector("text=Restore your account?");
  await accessible(page, "the restore page");
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button:has-text('Restore my account')")]);

  await expect(page.refused.length === 0, `the CSP refused: ${page.refused}`);
  console.log(JSON.stringify({ secret, used: renewed[0] }));
  await browser.close();
} catch (error) {
  await fail(String(error.stack || error));
}
