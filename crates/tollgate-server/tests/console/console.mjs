// Drives the console in Debian's Chromium (playwright-core, no browser download) as a person
// would: sign in (a wrong password first), see the team's API keys, create one (its secret shown
// once), disable it, delete it (confirming), sign out. Prints what the server must check, as
// JSON. Usage: node console.mjs <base URL> <email> <password> [screenshot directory]
import { accessible, browser, expect, fail, newPage } from "./browser.mjs";

const [base, email, password, shots] = process.argv.slice(2);
try {
  const page = await newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));

  // Signed out, the console sends a person to sign in.
  await page.goto(`${base}/`);
  await expect(page.url() === `${base}/sign-in`, `not sent to sign in: ${page.url()}`);
  await expect((await page.title()).startsWith("Sign in"), `title: ${await page.title()}`);
  await accessible(page, "the sign-in page");

  // A newcomer creates an account: signed in at once, asked to verify the address.
  await page.click("text=Create an account");
  await expect(page.url() === `${base}/sign-up`, `not on the sign-up page: ${page.url()}`);
  await accessible(page, "the sign-up page");
  await page.fill("#name", "Newcomer");
  await page.fill("#email", "newcomer@example.com");
  // A password of one repeated letter is refused by the server, with the reason; the form
  // keeps what was typed.
  await page.fill("#password", "aaaaaaaaaaaaaaaa");
  const [weak] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${base}/sign-up` && r.request().method() === "POST"),
    page.click("button[type=submit]"),
  ]);
  await expect(weak.status() === 400, `a weak password answered ${weak.status()}`);
  await expect(await page.isVisible("[role=alert]"), "a weak password was accepted");
  await expect((await page.inputValue("#name")) === "Newcomer", "the name was not kept");
  await page.fill("#password", "a sturdy passphrase for the newcomer");
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);
  await expect(await page.isVisible("text=Verify your email address"), "no reminder to verify the address");
  await Promise.all([page.waitForURL(`${base}/sign-in`), page.click("button:has-text('Sign out')")]);

  // A wrong password: the form again, with the reason, and a 401.
  await page.fill("#email", email);
  await page.fill("#password", "not the password");
  const [refused] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${base}/sign-in` && r.request().method() === "POST"),
    page.click("button[type=submit]"),
  ]);
  await expect(refused.status() === 401, `a wrong password answered ${refused.status()}`);
  await expect(await page.isVisible("[role=alert]"), "no error shown");
  await expect((await page.inputValue("#email")) === email, "the address was not kept");

  // The right one: the console, on the Personal Team.
  await page.fill("#password", password);
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);
  await expect(await page.isVisible("text=API Keys"), "no API Keys page");
  const team = await page.$eval("#team option[selected]", (o) => o.textContent);
  await expect(team === "Personal Team", `current team: ${team}`);
  await expect(await page.isVisible("text=No API keys yet."), "a new team has keys?");
  await accessible(page, "the API Keys page");
  if (shots) await page.screenshot({ path: `${shots}/console-empty.png`, fullPage: true });

  // Sessions (where sign-in alerts send people): this browser, and the one the test signed in
  // with curl before; end that one.
  await Promise.all([page.waitForURL(`${base}/sessions`), page.click("a:has-text('Sessions')")]);
  await expect(await page.isVisible("tr:has-text('This browser')"), "this browser is not marked");
  await accessible(page, "the Sessions page");
  const other = page.locator("tr", { hasText: "curl" });
  await expect((await other.count()) === 1, "the other session is not listed");
  if (shots) await page.screenshot({ path: `${shots}/console-sessions.png`, fullPage: true });
  await other.locator("button:has-text('End')").click();
  await page.waitForSelector("text=The session was ended");
  await expect(await page.isVisible("text=No other browser or device is signed in."), "another session remains");
  await expect(page.url() === `${base}/sessions`, `left the page: ${page.url()}`);
  await page.click("nav.tabs a:has-text('API Keys')");
  await page.waitForURL(`${base}/console`);

  // Users: the owner, an Admin signing in with a password; invite an address, then withdraw it.
  await Promise.all([page.waitForURL(`${base}/console/users`), page.click("nav.tabs a:has-text('Users')")]);
  const owner = page.locator("tr", { hasText: email });
  await expect((await owner.locator("td").nth(2).textContent()).trim() === "password", "sign-in methods");
  await expect((await owner.locator("td").nth(3).textContent()).trim() === "Admin", "the owner's role");
  await page.fill("#invite-email", "newcomer@example.com");
  await page.click("form[hx-post] button[type=submit]");
  await page.waitForSelector("text=An invitation was sent to newcomer@example.com.");
  const pending = page.locator("tr", { hasText: "newcomer@example.com" });
  await expect((await pending.locator("td").nth(1).textContent()).trim() === "Member", "the invitation's role");
  await accessible(page, "the Users page");
  if (shots) await page.screenshot({ path: `${shots}/console-users.png`, fullPage: true });
  await pending.locator("button:has-text('Withdraw')").click();
  await page.waitForSelector("text=The invitation was withdrawn.");
  await expect(!(await page.isVisible("tr:has-text('newcomer@example.com')")), "the invitation is still listed");
  await Promise.all([page.waitForURL(`${base}/console`), page.click("nav.tabs a:has-text('API Keys')")]);

  // Create a key: its secret is shown once, with a copy button; the table lists it.
  await page.fill("#key-name", "browser key");
  await page.click("form[hx-post] button[type=submit]");
  await page.waitForSelector("#new-key");
  const secret = (await page.textContent("#new-key")).trim();
  await expect(await page.isVisible("button:has-text('Copy')"), "no copy button");
  await expect((await page.inputValue("#key-name")) === "", "the form was not emptied after creating");
  // The copy button (the console's script, attached by data attributes: no inline script).
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  await page.click("button:has-text('Copy')");
  await page.waitForSelector("button:has-text('Copied')");
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  await expect(copied === secret, `the copy button copied ${copied}`);
  const row = page.locator("tr", { hasText: "browser key" });
  await accessible(page, "the API Keys page with a new key");
  await expect((await row.locator("td").nth(2).textContent()).trim() === "active", "the new key is not active");
  if (shots) await page.screenshot({ path: `${shots}/console-created.png`, fullPage: true });

  // Disable it; then delete it, confirming the dialog.
  await row.locator("button:has-text('Disable key')").click();
  await page.waitForSelector("tr:has-text('browser key') td.status-disabled");
  await expect(!(await page.isVisible("#new-key")), "the secret is shown again");
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("tr", { hasText: "browser key" }).locator("button:has-text('Delete key')").click();
  await page.waitForSelector("text=No API keys yet.");

  // The Audit Log: what was just done, newest first; searched by action; a range of days with
  // nothing in it; a malformed day is a 400 with the reason.
  await Promise.all([page.waitForURL(`${base}/console/audit`), page.click("nav.tabs a:has-text('Audit Log')")]);
  const actions = await page.$$eval("#events tbody tr td:nth-child(2)", (cells) => cells.map((c) => c.textContent.trim()));
  for (const action of ["DeleteApiKey", "UpdateApiKey", "CreateApiKey", "RevokeInvitation", "InviteTeamMember"]) {
    await expect(actions.includes(action), `${action} not in the audit log: ${actions}`);
  }
  await expect(actions.indexOf("DeleteApiKey") < actions.indexOf("CreateApiKey"), "not newest first");
  await accessible(page, "the Audit Log page");
  await page.fill("#q", "DeleteApiKey");
  await Promise.all([page.waitForURL(/\/console\/audit\?/), page.click("form.filters button[type=submit]")]);
  const found = await page.$$eval("#events tbody tr td:nth-child(2)", (cells) => cells.map((c) => c.textContent.trim()));
  await expect(found.length === 1 && found[0] === "DeleteApiKey", `search found ${found}`);
  await expect((await page.inputValue("#q")) === "DeleteApiKey", "the search was not kept in the form");
  const csv = await page.getAttribute("a:has-text('CSV')", "href");
  await expect(csv.includes("eventFilter.query=DeleteApiKey"), `export link: ${csv}`);
  if (shots) await page.screenshot({ path: `${shots}/console-audit.png`, fullPage: true });
  await page.goto(`${base}/console/audit?q=&from=2099-01-01`);
  await expect(await page.isVisible("text=No events match."), "events in the future");
  const bad = await page.goto(`${base}/console/audit?from=yesterday`);
  await expect(bad.status() === 400, `a malformed day answered ${bad.status()}`);
  await expect(await page.isVisible("text=From must be a day"), "no reason for the malformed day");
  await page.goto(`${base}/console`);

  // Without JavaScript every form still works: plain posts, answered with the whole page; a
  // deletion is confirmed on the page instead of in a dialog.
  const plain = await browser.newContext({ javaScriptEnabled: false });
  const bare = await plain.newPage();
  await bare.goto(`${base}/sign-in`);
  await bare.fill("#email", email);
  await bare.fill("#password", password);
  await Promise.all([bare.waitForURL(`${base}/console`), bare.click("button[type=submit]")]);
  await bare.fill("#key-name", "plain key");
  await Promise.all([bare.waitForURL(/\/api-keys$/), bare.click("button:has-text('Create')")]);
  await expect(await bare.isVisible("#new-key"), "no secret shown without script");
  const plainRow = () => bare.locator("tr", { hasText: "plain key" });
  await Promise.all([bare.waitForURL(/\/disable$/), plainRow().locator("button:has-text('Disable key')").click()]);
  await expect(await bare.isVisible("tr:has-text('plain key') td.status-disabled"), "not disabled without script");
  await Promise.all([bare.waitForURL(/\/delete$/), plainRow().locator("button:has-text('Delete key')").click()]);
  await expect(await bare.isVisible("text=this cannot be undone"), "no confirmation without script");
  await expect(await bare.isVisible("tr:has-text('plain key')"), "deleted before it was confirmed");
  await Promise.all([
    bare.waitForURL(/\/delete$/),
    bare.locator("form:has(input[name=confirmed]) button:has-text('Delete key')").click(),
  ]);
  await expect(await bare.isVisible("text=No API keys yet."), "not deleted without script");
  await bare.goto(`${base}/console/users`);
  await bare.fill("#invite-email", "plain@example.com");
  await Promise.all([bare.waitForURL(/\/users$/), bare.click("button:has-text('Invite')")]);
  await expect(await bare.isVisible("text=An invitation was sent to plain@example.com."), "not invited without script");
  await Promise.all([
    bare.waitForURL(/\/revoke$/),
    bare.locator("tr", { hasText: "plain@example.com" }).locator("button:has-text('Withdraw')").click(),
  ]);
  await expect(await bare.isVisible("text=The invitation was withdrawn."), "not withdrawn without script");
  await plain.close();

  // "+ Create Team": a bad name is shown next to its field; the new team becomes the current
  // one; the switcher goes back (its script submits on change).
  await Promise.all([page.waitForURL(`${base}/console/teams/new`), page.click("a:has-text('+ Create Team')")]);
  await accessible(page, "the new team page");
  await page.fill("#team-name", "   ");
  const [badTeam] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${base}/console/teams` && r.request().method() === "POST"),
    page.click("button:has-text('Create team')"),
  ]);
  await expect(badTeam.status() === 400, `a blank team name answered ${badTeam.status()}`);
  await expect(await page.isVisible("#team-name-error"), "no error next to the name");
  await page.fill("#team-name", "Browser Team");
  await Promise.all([page.waitForURL(/\/console\?team=/), page.click("button:has-text('Create team')")]);
  const created = await page.$eval("#team option[selected]", (o) => o.textContent);
  await expect(created === "Browser Team", `current team after creating: ${created}`);
  const personal = await page.$eval("#team", (select) =>
    [...select.options].find((o) => o.textContent === "Personal Team").value);
  await Promise.all([
    page.waitForURL(`${base}/console?team=${personal}`),
    page.selectOption("#team", { label: "Personal Team" }),
  ]);
  const back = await page.$eval("#team option[selected]", (o) => o.textContent);
  await expect(back === "Personal Team", `current team after switching: ${back}`);

  // The new team's Settings: rename it; a domain to verify shows its TXT record; delete the
  // team (a wrong name is refused), which leaves the Personal Team shown.
  const browserTeam = await page.$eval("#team", (select) =>
    [...select.options].find((o) => o.textContent === "Browser Team").value);
  await page.goto(`${base}/console/settings?team=${browserTeam}`);
  await page.fill("#settings-name", "Renamed Team");
  await Promise.all([page.waitForURL(/\/settings$/), page.click("button:has-text('Save')")]);
  await expect(await page.isVisible("text=The team's name and description were saved."), "not saved");
  await expect((await page.$eval("#team option[selected]", (o) => o.textContent)) === "Renamed Team", "not renamed");
  await page.fill("#domain", "example.com");
  await Promise.all([page.waitForURL(/\/domains$/), page.click("button:has-text('Add')")]);
  await expect(await page.isVisible("text=Publish the TXT record below for example.com"), "no instructions");
  const record = await page.textContent("tr:has-text('example.com') code[id^=record-name]");
  await expect(record.trim() === "_tollgate-challenge.example.com", `record name ${record}`);
  if (shots) await page.screenshot({ path: `${shots}/console-settings.png`, fullPage: true });
  await accessible(page, "the Settings page");
  await Promise.all([page.waitForURL(/\/remove$/), page.click("tr:has-text('example.com') button:has-text('Remove')")]);
  await expect(await page.isVisible("text=The domain was removed."), "the domain was not removed");
  await page.fill("#confirm-name", "Browser Team");
  const [wrongName] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/delete") && r.request().method() === "POST"),
    page.click("button:has-text('Delete team')"),
  ]);
  await expect(wrongName.status() === 400, `a wrong name answered ${wrongName.status()}`);
  await expect(await page.isVisible("#delete-error"), "no reason for the refusal");
  await page.fill("#confirm-name", "Renamed Team");
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button:has-text('Delete team')")]);
  const left = await page.$$eval("#team option", (options) => options.map((o) => o.textContent));
  await expect(left.length === 1 && left[0] === "Personal Team", `teams after deleting: ${left}`);

  // A reload shows the same; the team is remembered. Pages are served with a strict CSP.
  const reloaded = await page.reload();
  const policy = reloaded.headers()["content-security-policy"] || "";
  await expect(policy.includes("script-src 'self'") && policy.includes("frame-ancestors 'none'"), `CSP: ${policy}`);
  await expect(await page.isVisible("text=No API keys yet."), "the deleted key is back after a reload");

  // On a phone: every page in one column (nothing wider than the screen; a wide table scrolls
  // within itself), and as accessible.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  await small.goto(`${base}/sign-in`);
  await small.fill("#email", email);
  await small.fill("#password", password);
  await Promise.all([small.waitForURL(`${base}/console`), small.click("button[type=submit]")]);
  for (const path of ["/console", "/console/users", "/console/usage", "/console/billing", "/console/audit",
    "/console/settings", "/console/tokenizer", "/console/management-keys", "/account", "/sessions", "/console/teams/new"]) {
    await small.goto(`${base}${path}`);
    const [wide, screen] = await small.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    await expect(wide <= screen, `${path} is ${wide}px wide on a ${screen}px screen`);
    await accessible(small, `${path} on a phone`);
    if (shots) await small.screenshot({ path: `${shots}/phone${path.replaceAll("/", "-")}.png`, fullPage: true });
  }
  await phone.close();

  // Sign out: back to the sign-in page; the console is closed.
  await Promise.all([page.waitForURL(`${base}/sign-in`), page.click("button:has-text('Sign out')")]);
  await page.goto(`${base}/console`);
  await expect(page.url() === `${base}/sign-in`, "the console is open after signing out");
  await expect(errors.length === 0, `script errors: ${errors.join("; ")}`);
  await expect(page.refused.length === 0, `refused by the CSP: ${page.refused.join("; ")}`);
  console.log(JSON.stringify({ secret }));
} catch (error) {
  await fail(String(error && error.stack || error));
}
await browser.close();
