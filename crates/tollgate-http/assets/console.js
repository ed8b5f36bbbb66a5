// The console's few enhancements; every page works without them. Served from /assets with
// Subresource Integrity: the pages' Content-Security-Policy allows no inline script, so
// behaviour is attached here by data attributes.
"use strict";

// The team switcher shows the chosen team at once (without script, its button does).
document.addEventListener("change", (event) => {
  const select = event.target.closest && event.target.closest("select[data-submit-on-change]");
  if (select && select.form) select.form.requestSubmit();
});

// Copy buttons copy the text of the element they name.
document.addEventListener("click", (event) => {
  const button = event.target.closest && event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(() => {
    button.textContent = "Copied";
  });
});

// A form sent by htmx is emptied once it succeeded.
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.target.closest && event.target.closest("form[data-reset-on-success]");
  if (form && event.detail.successful) form.reset();
});

// An emailed link carries its token in the URL fragment, which browsers never send to a
// server: move it into the form, and out of the address bar and history.
document.addEventListener("DOMContentLoaded", () => {
  const field = document.querySelector("input[data-token-from-fragment]");
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (field && match) {
    field.value = decodeURIComponent(match[1]);
    history.replaceState(null, "", location.pathname);
  }
});

// Passkeys: WebAuthn has no form of its own, so a form marked data-passkey="create" (add one)
// or "get" (sign in with one) carries the server's options in data-passkey-options. On submit
// the browser asks the authenticator, and the form is sent with its answer in the hidden
// "credential" field. Without WebAuthn the form is sent as it is and the server says why.
const fromBase64Url = (text) => {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64 + "===".slice((base64.length + 3) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
};
const toBase64Url = (buffer) => {
  let binary = "";
  for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
};
const withIds = (credentials) => (credentials || []).map((c) => ({ ...c, id: fromBase64Url(c.id) }));
const creationOptions = (options) => ({
  ...options,
  challenge: fromBase64Url(options.challenge),
  user: { ...options.user, id: fromBase64Url(options.user.id) },
  excludeCredentials: withIds(options.excludeCredentials),
});
const requestOptions = (options) => ({
  ...options,
  challenge: fromBase64Url(options.challenge),
  allowCredentials: withIds(options.allowCredentials),
});
const credentialJson = (credential) => {
  const answer = credential.response;
  const response = { clientDataJSON: toBase64Url(answer.clientDataJSON) };
  if (answer.attestationObject) {
    response.attestationObject = toBase64Url(answer.attestationObject);
    if (answer.getTransports) response.transports = answer.getTransports();
  } else {
    response.authenticatorData = toBase64Url(answer.authenticatorData);
    response.signature = toBase64Url(answer.signature);
    response.userHandle = answer.userHandle ? toBase64Url(answer.userHandle) : null;
  }
  return {
    id: credential.id,
    rawId: toBase64Url(credential.rawId),
    type: credential.type,
    response,
    extensions: credential.getClientExtensionResults(),
  };
};
document.addEventListener("submit", async (event) => {
  const form = event.target.closest && event.target.closest("form[data-passkey]");
  if (!form || !window.PublicKeyCredential) return;
  const field = form.querySelector("input[name=credential]");
  if (!field || field.value) return;
  event.preventDefault();
  const options = JSON.parse(form.dataset.passkeyOptions).publicKey;
  const problem = form.querySelector("[data-passkey-problem]");
  try {
    const credential = form.dataset.passkey === "create"
      ? await navigator.credentials.create({ publicKey: creationOptions(options) })
      : await navigator.credentials.get({ publicKey: requestOptions(options) });
    field.value = JSON.stringify(credentialJson(credential));
    form.submit();
  } catch (error) {
    // Cancelled, timed out, or no authenticator: say so; the form stays to try again.
    if (problem) {
      problem.textContent = `The passkey did not answer (${error.name}). Try again, or use a code.`;
      problem.hidden = false;
    }
  }
});

// Where the browser speaks WebAuthn, the notes that passkeys need it are not needed.
document.addEventListener("DOMContentLoaded", () => {
  if (!window.PublicKeyCredential) return;
  for (const note of document.querySelectorAll("[data-passkey-unsupported]")) note.hidden = true;
});
