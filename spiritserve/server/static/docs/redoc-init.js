// Starts ReDoc on /redoc. A file of its own because the page's Content-Security-Policy allows no inline script.
// ReDoc styles itself with <style> elements; the policy admits those carrying this request's nonce, which the server
// put on this script's tag (browsers expose it only as the `nonce` property) and ReDoc copies onto each of them.
// Search is off: it runs in a worker made from a blob: URL, which the policy does not allow.
"use strict";

const container = document.getElementById("redoc");
Redoc.init(
  container.dataset.openapiUrl,
  { nonce: document.currentScript.nonce, disableSearch: true },
  container,
);
