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
