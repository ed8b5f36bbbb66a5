// An API key's access, limits and secret in Debian's Chromium, one step per run (the test
// calls the API with the keys in between). Prints what the server must check, as JSON. Usage:
//   node keys.mjs narrow <base> <email> <password> <model> [screenshots]  (→ {"first", "rotated", "id"})
//   node keys.mjs used   <base> <email> <password> <key id>
import { accessible, browser, expect, fail, newPage, signIn } from "./browser.mjs";

const [step, base, email, password, ...rest] = process.argv.slice(2);
try {
  const page = await newPage();
  await signIn(page, base, email, password);

  if (step === "narrow") {
    const [model, shots] = rest;
    // Create a key that may only chat, with one model, at most 60 requests a minute.
    await page.fill("#key-name", "narrow key");
    await page.click("summary:has-text('Access and limits')");
    await page.uncheck("input[name=all_endpoints]");
    await page.check("input[name=endpoint][value=chat]");
    await page.uncheck("input[name=all_models]");
    await page.check(`input[name=model][value='${model}']`);
    await page.fill("#key-qpm", "60");
    if (shots) await page.screenshot({ path: `${shots}/console-key-create.png`, fullPage: true });
    await page.click("form[hx-post] button[type=submit]");
    await page.waitForSelector("#new-key");
    const first = (await page.textContent("#new-key")).trim();
    const row = page.locator("tr", { hasText: "narrow key" });
    const access = await row.locator("code.acl").allTextContents();
    await expect(
      JSON.stringify(access) === JSON.stringify(["api-key:endpoint:chat", `api-key:model:${model}`]),
      `access: ${access}`,
    );
    await expect((await row.locator("td").nth(5).textContent()).trim() === "never", "last used before any use");

    // Its page: the pickers as granted; a malformed limit is refused next to the form.
    await Promise.all([page.waitForURL(/\/console\/api-keys\//), row.locator("a:has-text('narrow key')").click()]);
    const id = page.url().split("/console/api-keys/")[1].split("?")[0];
    await expect(await page.isChecked("input[name=endpoint][value=chat]"), "chat is not ticked");
    await expect(!(await page.isChecked("input[name=all_endpoints]")), "all endpoints is ticked");
    await expect((await page.inputValue("#key-qpm")) === "60", "the limit is not shown");
    // Also tokenize; 1,000 tokens a minute; a malformed requests-per-second is refused, and the
    // form keeps what was ticked and typed.
    await page.check("input[name=endpoint][value=tokenize]");
    await page.fill("#key-tpm", "1000");
    await page.fill("#key-qps", "many");
    await page.click("#key button:has-text('Save')");
    await page.waitForSelector("#key-error");
    await expect(await page.isChecked("input[name=endpoint][value=tokenize]"), "the refused form lost a ticked box");
    await expect((await page.inputValue("#key-tpm")) === "1000", "the refused form lost a typed limit");
    await page.fill("#key-qps", "");
    await page.click("#key button:has-text('Save')");
    await page.waitForSelector("text=The key was saved.");
    await expect(await page.isChecked("input[name=endpoint][value=tokenize]"), "tokenize was not saved");
    await expect((await page.inputValue("#key-tpm")) === "1000", "the token limit was not saved");

    // Rotate, keeping the old secret for an hour: the new one is shown once.
    const shown = await page.inputValue("input[name=version]");
    await page.fill("#grace-hours", "1");
    await page.click("button:has-text('Rotate key')");
    await page.waitForSelector("#new-key");
    const rotated = (await page.textContent("#new-key")).trim();
    await expect(rotated !== first, "the secret did not change");
    await expect(await page.isVisible("text=the previous secret works until"), "the grace is not shown");
    if (shots) await page.screenshot({ path: `${shots}/console-key.png`, fullPage: true });
    await accessible(page, "a key's page");
    // The same form posted again (what reloading that page does) rotates nothing.
    await page.$eval("input[name=version]", (input, version) => { input.value = version; }, shown);
    const [again] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith("/rotate") && r.request().method() === "POST"),
      page.click("button:has-text('Rotate key')"),
    ]);
    await expect(again.status() === 409, `the form posted again answered ${again.status()}`);
    await expect(await page.isVisible("#rotate-error"), "no reason shown for not rotating again");
    await expect(!(await page.isVisible("#new-key")), "a second new secret was shown");
    await page.goto(`${base}/console/api-keys/${id}`);
    await expect(!(await page.isVisible("#new-key")), "the new secret is shown again");
    await expect(page.refused.length === 0, `the CSP refused: ${page.refused}`);
    console.log(JSON.stringify({ first, rotated, id }));
  } else if (step === "used") {
    const [id] = rest;
    await page.goto(`${base}/console/api-keys/${id}`);
    const used = (await page.textContent("#last-used")).trim();
    await expect(used !== "never" && used.endsWith("UTC"), `last used: ${used}`);
    console.log(JSON.stringify({ used }));
  } else {
    await fail(`unknown step ${step}`);
  }
  await browser.close();
} catch (error) {
  await fail(String(error.stack || error));
}
