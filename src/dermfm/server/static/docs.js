// Interactive API docs at /docs: Swagger UI from the installed fastapi-offline package, started
// here rather than in an inline script (the Content-Security-Policy allows no inline script).
// validatorUrl null: no badge fetched from the public validator (nothing leaves the server).
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null });
