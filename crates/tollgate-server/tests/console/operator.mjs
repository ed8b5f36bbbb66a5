// The operator pages in Debian's Chromium: an operator signs in (password, then the code the
// test computed), finds a team, grants it credit (a promotional grant without its day is
// refused), raises its invoicing maximum, grants zero retention and blocks one of its keys.
// Usage: node operator.mjs <base> <email> <password> <code> <team id> [screenshots]
import { accessible, browser, expect, fail, newPage } from "./browser.mjs";

const [base, email, password, code, team, shots] = process.argv.slice(2);
try {
  const page = await newPage();
  await page.goto(`${base}/sign-in`);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click("button[type=submit]");
  await page.waitForSelector("#code");
  await page.fill("#code", code);
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);

  await Promise.all([page.waitForURL(`${base}/operator`), page.click("header a:has-text('Operator')")]);
  await page.fill("#operator-search", "personal");
  await Promise.all([page.waitForURL(/\/operator\?q=personal/), page.click("button:has-text('Search')")]);
  await accessible(page, "the operator's team list");
  if (shots) await page.screenshot({ path: `${shots}/operator.png`, fullPage: true });
  const row = page.locator("tr", { hasText: team });
  await expect((await row.count()) === 1, "the team is not listed");
  await Promise.all([page.waitForURL(`${base}/operator/teams/${team}`), row.locator("a").first().click()]);

  // Promotional credit needs its day; then a prepaid grant.
  await page.fill("#grant-usd", "5");
  await page.fill("#grant-reason", "a trial");
  await page.check("input[name=promo]");
  await page.click("button:has-text('Grant')");
  await page.waitForSelector("#grant-error");
  await page.fill("#grant-usd", "12.50");
  await page.fill("#grant-reason", "welcome credit");
  await page.click("button:has-text('Grant')");
  await page.waitForSelector("text=$12.50 of prepaid credit was granted.");
  await expect((await page.textContent("#prepaid")).trim() === "$12.50", "the balance did not move");
  await expect(await page.isVisible("td:has-text('welcome credit')"), "the entry is not listed");

  await page.fill("#limit-usd", "250");
  await page.click("#limit button:has-text('Set')");
  await page.waitForSelector("text=may invoice at most $250.00 a month");

  await page.click("button:has-text('Grant zero retention')");
  await page.waitForSelector("text=Zero retention is granted");

  const key = page.locator("#keys tr", { hasText: "test" });
  await key.locator("input[name=reason]").fill("leaked in a public gist");
  await key.locator("button:has-text('Block')").click();
  await page.waitForSelector("text=The key is blocked.");
  await expect(await page.isVisible("#keys td.status-blocked"), "the key is not shown blocked");
  await accessible(page, "the operator's team page");
  if (shots) await page.screenshot({ path: `${shots}/operator-team.png`, fullPage: true });
  await expect(page.refused.length === 0, `the CSP refused: ${page.refused}`);
  console.log(JSON.stringify({ done: true }));
  await browser.close();
} catch (error) {
  await fail(String(error.stack || error));
}
