// The operator pages in Debian's Chromium: an operator signs in (password, then the code the
// test computed), finds a team, grants it credit (a promotional grant without its day is
// refused), raises its invoicing maximum, grants zero retention, blocks the whole team (another
// key of it is refused with the reason) and lifts the block, and blocks one of its keys.
// Usage: node operator.mjs <base> <email> <password> <code> <team id> <another key> [screenshots]
import { accessible, browser, chat, expect, fail, newPage } from "./browser.mjs";

const [base, email, password, code, team, otherKey, shots] = process.argv.slice(2);

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

  // Block the whole team: an empty reason is refused; then any of its keys is refused with the
  // reason, until the block is lifted.
  const [blank] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/block") && r.request().method() === "POST"),
    page.evaluate(() => { document.querySelector("#team-block-reason").removeAttribute("required"); document.querySelector("#block button").click(); }),
  ]);
  await expect(blank.status() === 400, `an empty reason answered ${blank.status()}`);
  await page.waitForSelector("#block-error");
  await page.fill("#team-block-reason", "abuse report 42");
  await page.click("button:has-text('Block the team')");
  await page.waitForSelector("text=The team is blocked");
  await expect((await page.textContent("#block-reason-shown")).trim() === "abuse report 42", "the reason is not shown");
  const blocked = await chat(base, otherKey);
  await expect(blocked.status === 403, `a blocked team's key answered ${blocked.status}`);
  await expect(blocked.body.error.includes("abuse report 42"), `the refusal does not say why: ${JSON.stringify(blocked.body)}`);
  await accessible(page, "the operator's page of a blocked team");
  await page.goto(`${base}/operator?q=`);
  await expect(await page.isVisible("td:has-text('by the operator: abuse report 42')"), "the list does not show the block");
  await page.goto(`${base}/operator/teams/${team}`);
  await page.click("button:has-text('Lift the block')");
  await page.waitForSelector("text=The block is lifted");
  const served = await chat(base, otherKey);
  await expect(served.status === 200, `after the block was lifted the key answered ${served.status}`);

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
