// A team's people and machine keys in Debian's Chromium: an Admin makes a Member an Admin on
// the Users page; creates a management key (its secret shown once), revokes one (confirmed on
// the page), and keeps another. Prints what the server must check, as JSON. Usage:
//   node team.mjs <base> <email> <password> <member's email> [screenshots]
import { accessible, browser, expect, fail, newPage, signIn } from "./browser.mjs";

const [base, email, password, member, shots] = process.argv.slice(2);
try {
  const page = await newPage();
  await signIn(page, base, email, password);

  // Users: the member's role, changed in place (htmx).
  await Promise.all([page.waitForURL(/\/console\/users/), page.click("nav.tabs a:has-text('Users')")]);
  const row = page.locator("tr", { hasText: member });
  await expect((await row.locator("select[name=role]").inputValue()) === "member", "the member's role");
  await row.locator("select[name=role]").selectOption("admin");
  await row.locator("button:has-text('Change role')").click();
  await page.waitForSelector("text=The member is now an Admin.");
  const role = await page.locator("tr", { hasText: member }).locator("select[name=role]").inputValue();
  await expect(role === "admin", `the role after the change: ${role}`);
  // The owner's own row offers no change.
  await expect((await page.locator("tr", { hasText: email }).locator("select").count()) === 0, "the owner may change their own role");
  if (shots) await page.screenshot({ path: `${shots}/console-users-roles.png`, fullPage: true });
  await accessible(page, "the Users page with roles");

  // Management Keys: create one and revoke it (confirmed on the page); keep another.
  await Promise.all([page.waitForURL(/\/console\/management-keys/), page.click("nav.tabs a:has-text('Management Keys')")]);
  // The test's own key, made with the operator's CLI, is listed as the operator's.
  await expect(await page.isVisible("td:has-text('the operator')"), "the operator's key is not listed as theirs");
  await page.fill("#management-key-name", "revoked key");
  await page.click("button:has-text('Create')");
  await page.waitForSelector("#new-key");
  const revoked = (await page.textContent("#new-key")).trim();
  await page.locator("tr", { hasText: "revoked key" }).locator("button:has-text('Revoke')").click();
  await page.waitForSelector("text=Scripts using it stop working at once.");
  await page.locator("form:has(input[name=confirmed]) button:has-text('Revoke')").click();
  await page.waitForSelector("text=The management key was revoked");
  await expect(!(await page.isVisible("tr:has-text('revoked key')")), "the revoked key is listed");
  await page.fill("#management-key-name", "ci key");
  await page.click("button:has-text('Create')");
  await page.waitForSelector("#new-key");
  const kept = (await page.textContent("#new-key")).trim();
  const by = (await page.locator("tr", { hasText: "ci key" }).locator("td").nth(3).textContent()).trim();
  await expect(by === email, `made by ${by}`);
  if (shots) await page.screenshot({ path: `${shots}/console-management-keys.png`, fullPage: true });
  await accessible(page, "the Management Keys page");
  await expect(page.refused.length === 0, `the CSP refused: ${page.refused}`);
  console.log(JSON.stringify({ revoked, kept }));
  await browser.close();
} catch (error) {
  await fail(String(error.stack || error));
}
