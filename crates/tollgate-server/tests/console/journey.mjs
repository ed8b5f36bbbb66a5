// A newcomer's whole way through the console in Debian's Chromium, in order: sign up; verify
// the address from the link in the mail a real SMTP server received; turn on TOTP; sign out and
// in with the next step's code (a step's code is accepted once, so the script computes the next
// one instead of waiting); add a passkey (Chromium's virtual authenticator) and sign in with it;
// create a team; invite a member, who signs up, verifies and accepts from the mailed link; create
// a key, copy it, and call /v1/chat/completions with it; read the usage and the audit events;
// disable the key (the API refuses it) and delete it. Then the Member's view of the team, at a
// phone's width. Prints what the server must check, as JSON.
// Usage: node journey.mjs <base URL> <maildir> <server's unix time> [screenshots]
import { readdir, readFile } from "node:fs/promises";
import { accessible, browser, chat, expect, fail, newPage, totp } from "./browser.mjs";

const [base, maildir, now, shots] = process.argv.slice(2);
const owner = { name: "Ada Newcomer", email: "ada@example.com", password: "a sturdy passphrase for ada" };
const member = { name: "Max Member", email: "max@example.com", password: "a sturdy passphrase for max" };
const shot = async (page, name) => { if (shots) await page.screenshot({ path: `${shots}/journey-${name}.png`, fullPage: true }); };

/** A received message's text: headers unfolded, a quoted-printable body decoded. */
const decode = (raw) => {
  const text = raw.replace(/\r\n/g, "\n");
  const split = text.indexOf("\n\n");
  const head = text.slice(0, split).replace(/\n[ \t]/g, " ");
  let body = text.slice(split + 2);
  if (/^Content-Transfer-Encoding: quoted-printable$/im.test(head)) {
    body = Buffer.from(body.replace(/=\n/g, "").replace(/=([0-9A-F]{2})/g, (_, hex) => String.fromCharCode(parseInt(hex, 16))), "latin1").toString("utf8");
  }
  return { head, body };
};

/**
 * The link in the newest mail to `to` whose subject holds `subject`, from the SMTP server's
 * maildir (delivery is asynchronous: waits up to 10 s).
 */
const mailedLink = async (to, subject) => {
  for (let attempt = 0; attempt < 200; attempt++) {
    const names = await readdir(`${maildir}/new`).catch(() => []);
    for (const name of names.sort().reverse()) {
      const { head, body } = decode(await readFile(`${maildir}/new/${name}`, "utf8"));
      if (new RegExp(`^To: .*${to}`, "im").test(head) && new RegExp(`^Subject: .*${subject}`, "im").test(head)) {
        const link = body.match(/https?:\/\/\S+#token=\S+/);
        if (link) return link[0];
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`no mail '${subject}' to ${to} in ${maildir}`);
};

/** Signs up on the page; lands on the console, asked to verify the address. */
const signUp = async (page, who) => {
  await page.goto(`${base}/sign-up`);
  await page.fill("#name", who.name);
  await page.fill("#email", who.email);
  await page.fill("#password", who.password);
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);
  await expect(await page.isVisible("text=Verify your email address"), "no reminder to verify the address");
};

/** Opens the verification link from the mail and confirms it. */
const verify = async (page, who) => {
  const link = await mailedLink(who.email, "Verify your email address");
  await expect(link.startsWith(`${base}/verify-email#token=`), `the link points elsewhere: ${link}`);
  await page.goto(link);
  await page.click("button:has-text('Verify my address')");
  await page.waitForSelector("text=is verified.");
};

/** The password step of a sign-in, which asks for the second factor. */
const passwordStep = async (page, who) => {
  await page.goto(`${base}/sign-in`);
  await page.fill("#email", who.email);
  await page.fill("#password", who.password);
  await Promise.all([page.waitForURL(`${base}/sign-in`), page.click("button[type=submit]")]);
  await page.waitForSelector("h1:has-text('Two-factor authentication')");
};

const signOut = (page) => Promise.all([page.waitForURL(`${base}/sign-in`), page.click("button:has-text('Sign out')")]);

try {
  const page = await newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  let step = Math.floor(Number(now) / 30);

  // 1. Sign up, and verify the address from the mail.
  await signUp(page, owner);
  await verify(page, owner);
  await page.goto(`${base}/console`);
  await expect(!(await page.isVisible("text=Verify your email address")), "still asked to verify");
  await shot(page, "1-signed-up");

  // 2. Turn on TOTP from the account page.
  await Promise.all([page.waitForURL(`${base}/account`), page.click(`header a:has-text('${owner.email}')`)]);
  await page.fill("#totp-password", owner.password);
  await page.click("button:has-text('Set up an authenticator app')");
  await page.waitForSelector("img.qr");
  const secret = (await page.textContent("#totp-secret")).trim();
  await page.fill("#totp-code", totp(secret, step));
  await page.click("button:has-text('Turn on')");
  await page.waitForSelector("#recovery-codes");
  const codes = (await page.textContent("#recovery-codes-text")).trim().split("\n").map((c) => c.trim());
  await shot(page, "2-totp-on");

  // 3. Sign out, and in with the next step's code.
  await signOut(page);
  await passwordStep(page, owner);
  await accessible(page, "the second-factor page");
  step += 1;
  await page.fill("#code", totp(secret, step));
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button:has-text('Continue')")]);

  // 4. Add a passkey (Chromium's virtual authenticator stands for a security key), then sign
  // in with it instead of a code.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "usb", hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
  });
  await page.goto(`${base}/account`);
  await page.fill("#new-passkey-password", owner.password);
  // (the server accepts a code of the step before or after its own, each once: this step's and
  // the next are spent, so a recovery code confirms)
  await page.fill("#new-passkey-code", codes[0]);
  await page.click("button:has-text('Add a passkey')");
  await page.waitForSelector("#passkey-name, #passkey-error");
  await expect(!(await page.isVisible("#passkey-error")), `adding a passkey was refused: ${await page.textContent("main")}`);
  await expect(!(await page.isVisible("[data-passkey-unsupported]")), "the page says passkeys need JavaScript");
  await accessible(page, "the Account page adding a passkey");
  await page.fill("#passkey-name", "Security key");
  await page.click("button:has-text('Add the passkey')");
  await page.waitForSelector("text=The passkey Security key was added");
  await expect(await page.isVisible("td:has-text('Security key')"), "the passkey is not listed");
  await shot(page, "4-passkey");
  await signOut(page);
  await passwordStep(page, owner);
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button:has-text('Use a passkey')")]);

  // 5. Create a team.
  await Promise.all([page.waitForURL(`${base}/console/teams/new`), page.click("a:has-text('+ Create Team')")]);
  await page.fill("#team-name", "Journey Team");
  await Promise.all([page.waitForURL(/\/console\?team=/), page.click("button:has-text('Create team')")]);
  const team = new URL(page.url()).searchParams.get("team");

  // 6. Invite a member, who signs up with the invited address, verifies it, and accepts.
  await Promise.all([page.waitForURL(/\/console\/users/), page.click("nav.tabs a:has-text('Users')")]);
  await page.fill("#invite-email", member.email);
  await page.click("button:has-text('Invite')");
  await page.waitForSelector(`text=An invitation was sent to ${member.email}.`);
  const invitation = await mailedLink(member.email, "You are invited to join a team");
  const memberContext = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const other = await memberContext.newPage();
  await signUp(other, member);
  await verify(other, member);
  await other.goto(invitation);
  await expect(await other.isVisible("td:has-text('Journey Team')"), "the invitation does not name the team");
  await Promise.all([other.waitForURL(/\/console\?team=/), other.click("button:has-text('Accept the invitation')")]);
  await expect(new URL(other.url()).searchParams.get("team") === team, "the member is not in the team");

  // 7. Create a key, copy it with the button, and call the API with it.
  await page.goto(`${base}/console?team=${team}`);
  await page.fill("#key-name", "journey key");
  await page.click("form[hx-post] button[type=submit]");
  await page.waitForSelector("#new-key");
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  await page.click("button:has-text('Copy')");
  await page.waitForSelector("button:has-text('Copied')");
  const key = await page.evaluate(() => navigator.clipboard.readText());
  await expect(key === (await page.textContent("#new-key")).trim(), "the copy button copied something else");
  const answered = await chat(base, key);
  await expect(answered.status === 200, `the API answered ${answered.status}: ${JSON.stringify(answered.body)}`);
  await expect(answered.body.choices[0].message.content.length > 0, "an empty answer");
  await shot(page, "7-key");

  // 8. The usage of that request, and the audit events of all this.
  await Promise.all([page.waitForURL(/\/console\/usage/), page.click("nav.tabs a:has-text('Usage')")]);
  await expect(!(await page.isVisible("text=No usage")), "the usage page shows nothing");
  await expect(await page.isVisible("td:has-text('grok-test')"), "the model is not in the usage table");
  await accessible(page, "the Usage page with a request");
  await shot(page, "8-usage");
  await Promise.all([page.waitForURL(/\/console\/audit/), page.click("nav.tabs a:has-text('Audit Log')")]);
  const actions = await page.$$eval("#events tbody tr td:nth-child(2)", (cells) => cells.map((c) => c.textContent.trim()));
  for (const action of ["CreateApiKey", "InviteTeamMember", "AcceptInvitation", "CreateTeam"]) {
    await expect(actions.includes(action), `${action} not in the audit log: ${actions}`);
  }
  await shot(page, "8-audit");

  // 9. The Member's view, on a phone: the team's keys and usage, no Billing or Management Keys,
  // no invitation form, no role changes; and the server refuses what is not shown.
  await other.goto(`${base}/console?team=${team}`);
  const tabs = await other.$$eval("nav.tabs a", (links) => links.map((a) => a.textContent.trim()));
  await expect(!tabs.includes("Billing") && !tabs.includes("Management Keys"), `a Member sees ${tabs}`);
  await expect(tabs.includes("API Keys") && tabs.includes("Usage"), `a Member misses tabs: ${tabs}`);
  await other.goto(`${base}/console/users?team=${team}`);
  await expect(!(await other.isVisible("#invite-email")), "a Member is offered to invite");
  await expect((await other.locator("select[name=role]").count()) === 0, "a Member is offered role changes");
  const [wide, screen] = await other.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  await expect(wide <= screen, `the Users page is ${wide}px wide on a ${screen}px screen`);
  await accessible(other, "the Users page as a Member on a phone");
  await shot(other, "9-member-users");
  const billing = await other.goto(`${base}/console/billing?team=${team}`);
  await expect(billing.status() === 403, `a Member opened Billing: ${billing.status()}`);
  await memberContext.close();

  // 10. Disable the key: the API refuses it. Then delete it.
  await page.goto(`${base}/console?team=${team}`);
  const row = page.locator("tr", { hasText: "journey key" });
  await row.locator("button:has-text('Disable key')").click();
  await page.waitForSelector("tr:has-text('journey key') td.status-disabled");
  const refused = await chat(base, key);
  await expect(refused.status >= 400, `a disabled key answered ${refused.status}`);
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("tr", { hasText: "journey key" }).locator("button:has-text('Delete key')").click();
  await page.waitForSelector("text=No API keys yet.");
  await shot(page, "10-deleted");

  await expect(errors.length === 0, `script errors: ${errors.join("; ")}`);
  await expect(page.refused.length === 0, `refused by the CSP: ${page.refused.join("; ")}`);
  console.log(JSON.stringify({ team, key, disabledStatus: refused.status }));
} catch (error) {
  await fail(String(error && error.stack || error));
}
await browser.close();
