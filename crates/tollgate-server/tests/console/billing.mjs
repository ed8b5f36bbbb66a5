// The Billing, Usage and Tokenizer pages in Debian's Chromium, one step per run (the payment happens on
// the provider's page in between, played by the test). Prints what the server must check, as
// JSON. Usage:
//   node billing.mjs buy   <base> <email> <password> [screenshots]   (→ {"checkout": URL})
//   node billing.mjs after <base> <email> <password> <model> [screenshots]
import { accessible, browser, expect, fail, newPage, signIn } from "./browser.mjs";

const [step, base, email, password, ...rest] = process.argv.slice(2);
try {
  const page = await newPage();
  await signIn(page, base, email, password);
  await Promise.all([page.waitForURL(/\/console\/billing/), page.click("nav.tabs a:has-text('Billing')")]);

  if (step === "buy") {
    const [shots] = rest;
    // The operator's grant is the credit available.
    const available = (await page.textContent("#available")).trim();
    await expect(available === "$5.00", `credit available: ${available}`);
    // A limit above the operator's maximum is refused next to its field, not clamped.
    await page.fill("#limit-amount", "5");
    await page.click("button:has-text('Save limit')");
    await page.waitForSelector("#limit-error");
    await expect((await page.getAttribute("#limit-amount", "aria-invalid")) === "true", "the limit is not marked invalid");
    // An amount that is not one: the reason, next to the field.
    await page.fill("#buy-amount", "fifty");
    await page.click("button:has-text('Pay on the payment page')");
    await page.waitForSelector("#buy-error");
    if (shots) await page.screenshot({ path: `${shots}/console-billing.png`, fullPage: true });
    await accessible(page, "the Billing page");
    // Billing details: a country that is not two letters is refused next to the form.
    await page.fill("#details-name", "Ada Research Ltd");
    await page.fill("#details-line1", "1 Rue de la Paix");
    await page.fill("#details-city", "Paris");
    await page.fill("#details-postal", "75002");
    await page.fill("#details-country", "F");
    await page.click("button:has-text('Save details')");
    await page.waitForSelector("#details-error");
    await expect((await page.inputValue("#details-name")) === "Ada Research Ltd", "the refused form lost what was typed");
    await page.fill("#details-country", "fr");
    await page.click("button:has-text('Save details')");
    await page.waitForSelector("text=The billing details were saved");
    await expect((await page.inputValue("#details-country")) === "FR", "the country is not shown as saved");
    // Buying on the payment provider's page: a page of ours links there.
    await page.fill("#buy-amount", "50");
    await page.click("button:has-text('Pay on the payment page')");
    await page.waitForSelector("text=Buy $50.00 of credit");
    const checkout = await page.getAttribute("a:has-text('Continue to payment')", "href");
    await expect(await page.isVisible("a:has-text('Cancel')"), "no way back");
    await accessible(page, "the page linking to the payment page");
    await expect(page.refused.length === 0, `the CSP refused: ${page.refused}`);
    console.log(JSON.stringify({ checkout }));
  } else if (step === "after") {
    const [model, shots] = rest;
    // The payment's credit, the purchase and its receipt.
    const available = (await page.textContent("#available")).trim();
    await expect(available.startsWith("$54.99"), `credit available after the purchase and a request: ${available}`);
    await expect(await page.isVisible("#purchases td:has-text('succeeded')"), "the purchase is not listed as succeeded");
    const receipt = page.locator("#invoices tr", { hasText: "Receipt" });
    await expect((await receipt.count()) === 1, "no receipt");
    await expect((await receipt.locator("td").nth(3).textContent()).trim() === "$50.00", "the receipt's total");
    await Promise.all([page.waitForURL(/\/billing\/invoices\//), receipt.locator("a:has-text('View')").click()]);
    await page.waitForSelector("text=$50.00");
    await expect(await page.isVisible("text=Ada Research Ltd"), "the receipt is not made out to the billing details");
    await page.goBack();

    // Usage: the request made with the key, drawn and tabled, by model and by key.
    await Promise.all([page.waitForURL(/\/console\/usage/), page.click("nav.tabs a:has-text('Usage')")]);
    const bars = await page.locator("#chart rect").count();
    await expect(bars >= 1, "no bar in the chart");
    await expect(await page.isVisible(`#usage-table td:has-text('${model}')`), "the model is not in the table");
    await expect(await page.isVisible("ul.legend li"), "no legend");
    const cost = (await page.textContent("#total-cost")).trim();
    await expect(cost !== "$0.00", `total cost ${cost}`);
    if (shots) await page.screenshot({ path: `${shots}/console-usage.png`, fullPage: true });
    await accessible(page, "the Usage page");
    await Promise.all([page.waitForURL(/by=key/), page.selectOption("#usage-by", "key")]);
    await expect(await page.isVisible("#usage-table td:has-text('test')"), "the key is not named in the table");
    await Promise.all([page.waitForURL(/show=tokens/), page.selectOption("#usage-show", "tokens")]);
    const tokens = (await page.textContent("#total-tokens")).trim();
    await expect(Number(tokens) > 0, `total tokens ${tokens}`);
    // The Tokenizer: the model's tokens of a text, highlighted and counted (tiktoken's
    // cl100k_base: "Hello world" is "Hello" 9906 and " world" 1917).
    await Promise.all([page.waitForURL(/\/console\/tokenizer/), page.click("nav.tabs a:has-text('Tokenizer')")]);
    await page.selectOption("#tokenizer-model", model);
    await page.fill("#tokenizer-text", "Hello world");
    await page.click("button:has-text('Tokenize')");
    await page.waitForSelector("#tokens");
    const count = (await page.textContent("#token-count")).trim();
    await expect(count === "2", `${count} tokens`);
    const spans = await page.$$eval("#tokens .tok", (all) => all.map((s) => [s.textContent, s.title]));
    await expect(JSON.stringify(spans) === JSON.stringify([["Hello", "token 9906"], [" world", "token 1917"]]), JSON.stringify(spans));
    await expect((await page.inputValue("#tokenizer-text")) === "Hello world", "the text was not kept");
    if (shots) await page.screenshot({ path: `${shots}/console-tokenizer.png`, fullPage: true });
    await accessible(page, "the Tokenizer page");
    await expect(page.refused.length === 0, `the CSP refused: ${page.refused}`);
    console.log(JSON.stringify({ cost, tokens }));
  } else {
    await fail(`unknown step ${step}`);
  }
  await browser.close();
} catch (error) {
  await fail(String(error.stack || error));
}
