// Starts Swagger UI on /docs with FastAPI's default options. A file of its own because the page's
// Content-Security-Policy allows no inline script. URLs are relative to /docs, so a path prefix added by a
// proxy in front of the server keeps working.
"use strict";

const container = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: container.dataset.openapiUrl,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // the default would send the schema's URL to validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
