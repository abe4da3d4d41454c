// dermfm clinician web app: sign in, new case, results, chat, documents and case history.
// Plain ES module, no build step. Every server string is inserted as text, never as HTML.

const TOKEN_KEY = "dermfm.token";
const USER_KEY = "dermfm.user";
const DOCUMENTS = [
  ["report", "Consultation report"],
  ["soap", "SOAP note"],
  ["handout", "Patient handout"],
  ["referral", "Referral letter"],
];
const FORMATS = [
  ["pdf", "PDF"],
  ["md", "Markdown"],
];
const ALERT_LEVELS = new Set(["urgent", "emergency"]);
const BLOB_LIFETIME_MS = 30000;

/** The element with the given data-testid. */
const byId = (testid) => document.querySelector(`[data-testid="${testid}"]`);

/** The case shown on the results screen. */
const state = {};

function forgetCase() {
  Object.assign(state, { caseId: null, source: null, report: null, messages: [] });
}

forgetCase();

/** An error answered by the server (or the network), with its human-readable message. */
class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Build an element; `text` sets textContent, `on*` adds listeners, children are nodes or text. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "testid") node.dataset.testid = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** A probability as a rounded percentage that never reads as certain (>99%, <1%). */
function percent(p) {
  if (p >= 0.995) return ">99%";
  if (p < 0.005) return "<1%";
  return `${Math.round(p * 100)}%`;
}

const words = (s) => String(s).replaceAll("_", " ");
const capitalise = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const baseName = (path) => String(path || "").split(/[\\/]/).pop();

// ---------------------------------------------------------------- session and requests

const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  get user() {
    return JSON.parse(sessionStorage.getItem(USER_KEY) || "null");
  },
  save(token, user) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(USER_KEY, JSON.stringify(user));
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
  },
};

/** Fetch an API path with the bearer token; a failed answer throws its `error.message`. */
async function request(path, { method = "GET", json, form, auth = true } = {}) {
  const headers = {};
  if (auth && session.token) headers.Authorization = `Bearer ${session.token}`;
  let body = form;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch {
    throw new ApiError("Could not reach the server. Check the connection and try again.", 0);
  }
  if (response.ok) return response;
  let message = `The server answered ${response.status} ${response.statusText}.`;
  let code = "http";
  try {
    const data = await response.json();
    if (data && data.error && data.error.message) ({ message, code } = data.error);
  } catch {
    // not a JSON error body: keep the status line
  }
  if (response.status === 401 && auth) endSession();
  throw new ApiError(message, response.status, code);
}

/** The JSON answer of an API path (null for 204 No Content). */
async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

// ---------------------------------------------------------------- alerts and screens

function showError(message) {
  byId("error-message").textContent = message;
  byId("error").hidden = false;
}

function clearError() {
  byId("error").hidden = true;
  byId("error-message").textContent = "";
}

/** Wrap an event handler: clears the alert first, shows the message of anything it throws. */
function guarded(handler) {
  return async (event) => {
    clearError();
    try {
      await handler(event);
    } catch (error) {
      showError(error.message || String(error));
    }
  };
}

function show(screen) {
  for (const node of document.querySelectorAll(".screen")) {
    node.hidden = node.dataset.testid !== `${screen}-screen`;
  }
  const user = session.user;
  byId("nav").hidden = !user;
  byId("user-name").textContent = user ? `${user.name} (${user.role})` : "";
  window.scrollTo(0, 0);
}

/** Forget the token and go back to the sign-in screen. */
function endSession() {
  session.clear();
  forgetCase();
  byId("results").replaceChildren();
  byId("chat-messages").replaceChildren();
  byId("document-links").replaceChildren();
  byId("history-list").replaceChildren();
  show("login");
  byId("login-username").focus();
}

/** Show the screen named by the address (#new, #history, #case/ID). */
async function route() {
  if (!session.token) {
    show("login");
    return;
  }
  const hash = location.hash.replace(/^#/, "");
  if (hash.startsWith("case/")) {
    await openCase(decodeURIComponent(hash.slice("case/".length)));
  } else if (hash === "history") {
    show("history");
    await loadHistory();
  } else {
    show("new-case");
  }
}

/** Go to an address; routes now when the address does not change. */
function go(hash) {
  if (location.hash === hash) guarded(route)();
  else location.hash = hash;
}

// ---------------------------------------------------------------- sign in

async function signIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const data = await api("/api/login", {
    method: "POST",
    auth: false,
    json: { username: form.username.value.trim(), password: form.password.value },
  }).finally(() => {
    form.password.value = "";
  });
  session.save(data.token, data.user);
  form.reset();
  if (location.hash.startsWith("#case/") || location.hash === "#history") await route();
  else go("#new");
}

// ---------------------------------------------------------------- new case

let chosenFile = null;
let previewUrl = null;

function choosePhoto(event) {
  const file = event.currentTarget.files[0];
  event.currentTarget.value = "";
  if (!file) return;
  chosenFile = file;
  byId("case-file-name").textContent = `Chosen: ${file.name}`;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  const preview = byId("case-preview");
  if (/\.(dcm|dicom|dic)$/i.test(file.name) || file.type === "application/dicom") {
    // a browser cannot show DICOM: the stored image is shown with the results
    preview.hidden = true;
    preview.removeAttribute("src");
    return;
  }
  previewUrl = URL.createObjectURL(file);
  preview.src = previewUrl;
  preview.hidden = false;
}

function resetCaseForm() {
  byId("case-form").reset();
  chosenFile = null;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  byId("case-preview").hidden = true;
  byId("case-preview").removeAttribute("src");
  byId("case-file-name").textContent = "No photo chosen yet.";
}

async function submitCase(event) {
  event.preventDefault();
  if (!chosenFile) throw new Error("Choose or take a photo first.");
  const form = event.currentTarget;
  const body = new FormData();
  body.append("image", chosenFile, chosenFile.name);
  for (const name of ["question", "age", "sex", "site", "duration", "skin_type", "modality"]) {
    const value = form.elements[name].value.trim();
    if (value) body.append(name, value);
  }
  setBusy(form, "busy", true);
  try {
    const data = await api("/api/cases", { method: "POST", form: body });
    resetCaseForm();
    // the stored case also holds the question and its answer as the first messages
    await openCase(data.case.case_id);
    history.pushState(null, "", `#case/${encodeURIComponent(data.case.case_id)}`);
  } finally {
    setBusy(form, "busy", false);
  }
}

/** Open a study of the server's PACS by its Study Instance UID: one case per photo; the first
 * one is shown (the others are in the case history). */
async function openStudy(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const uid = form.elements.study_uid.value.trim();
  if (!/^[0-9]+(\.[0-9]+)*$/.test(uid) || uid.length > 64) {
    throw new Error("A Study Instance UID is digits and dots (at most 64 characters).");
  }
  const storeBack = form.elements.store_back.checked ? "true" : "false";
  setBusy(form, "pacs-busy", true);
  try {
    const path = `/api/pacs/studies/${encodeURIComponent(uid)}?store_back=${storeBack}`;
    const data = await api(path, { method: "POST" });
    form.reset();
    const first = data.cases[0].case.case_id;
    await openCase(first);
    history.pushState(null, "", `#case/${encodeURIComponent(first)}`);
  } finally {
    setBusy(form, "pacs-busy", false);
  }
}

/** Disable a form's controls and show its busy indicator while a request runs. */
function setBusy(form, indicator, busy) {
  form.setAttribute("aria-busy", String(busy));
  byId(indicator).hidden = !busy;
  for (const control of form.querySelectorAll("button, input, select, textarea")) {
    control.disabled = busy;
  }
}

// ---------------------------------------------------------------- results

/** Load a stored case and show its latest report, messages and documents. */
async function openCase(caseId) {
  const data = await api(`/api/cases/${encodeURIComponent(caseId)}`);
  Object.assign(state, {
    caseId: data.case_id,
    source: data.source,
    report: data.reports[data.reports.length - 1],
    messages: data.messages,
  });
  renderReport(state.report);
  renderMessages();
  renderDocuments();
  show("results");
}

function renderReport(report, changed = null) {
  const sections = [
    headerCard(report, changed),
    el("p", { class: "disclaimer", testid: "disclaimer", text: report.disclaimer }),
    triageCard(report.triage),
  ];
  if (report.quality.problems.length) sections.push(qualityCard(report.quality));
  if (report.differential) sections.push(differentialCard(report.differential));
  if (report.characteristics.length) sections.push(conceptsCard(report.characteristics));
  sections.push(patientCard(report.patient));
  if (report.narrative.summary) sections.push(summaryCard(report.narrative));
  if (report.status === "complete") sections.push(similarCard(report.similar_cases));
  if (report.information.length) sections.push(informationCard(report.information));
  if (report.limitations.length) sections.push(limitationsCard(report.limitations));
  byId("results").replaceChildren(...sections);
  loadCaseImage(state.caseId);
}

function card(testid, title, ...children) {
  return el("section", { class: "card", testid }, el("h2", { text: title }), ...children);
}

function headerCard(report, changed) {
  const complete = report.status === "complete";
  return el(
    "section",
    { class: "card case-header", testid: "case-header" },
    el("img", { class: "case-photo", testid: "case-photo", alt: "The case photo", hidden: true }),
    el(
      "div",
      { class: "case-title" },
      el("h1", { text: `Case ${state.caseId}` }),
      el("span", {
        class: `status ${complete ? "ok" : "warn"}`,
        testid: "case-status",
        "data-status": report.status,
        text: complete ? "Complete" : "Needs a better photo",
      }),
      el("p", {
        class: "muted",
        text: `${baseName(state.source)} · ${when(report.created)} · model ${report.model}`,
      }),
      report.modality ? modalityLine(report.modality) : null,
      report.question
        ? el("p", { testid: "case-question-shown", text: `Question: ${report.question}` })
        : null,
      changed
        ? el("p", {
            class: "notice",
            testid: "report-updated",
            text: `Report updated from your message${
              changed.length ? ` (${changed.map(words).join(", ")})` : ""
            }.`,
          })
        : null,
    ),
  );
}

function modalityLine(modality) {
  const how = modality.given
    ? "stated by the user"
    : `${modality.score_kind}: ${percent(modality.probability)}`;
  const kind = modality.label === "dermoscopy" ? "dermoscopy" : "clinical photo";
  return el("p", { testid: "modality", text: `Photo type: ${kind} (${how})` });
}

function triageCard(triage) {
  const alert = ALERT_LEVELS.has(triage.level);
  return el(
    "section",
    {
      class: `card triage level-${triage.level}${alert ? " alert-level" : ""}`,
      testid: "triage",
      "data-level": triage.level,
      role: alert ? "alert" : null,
    },
    el(
      "h2",
      {},
      "Triage: ",
      el("span", { testid: "triage-level", text: capitalise(triage.level) }),
    ),
    el("p", { class: "advice", testid: "triage-advice", text: triage.advice }),
    triage.fired.length
      ? el(
          "ul",
          { class: "rules" },
          triage.fired.map((hit) =>
            el(
              "li",
              { testid: "triage-rule", "data-rule": hit.rule, "data-level": hit.level },
              el("span", { class: `level-tag level-${hit.level}`, text: capitalise(hit.level) }),
              el("span", { class: "reason", testid: "triage-reason", text: hit.reason }),
              el("span", { class: "muted", text: `${hit.advice} (rule: ${hit.rule})` }),
            ),
          ),
        )
      : el("p", { class: "muted", text: "No safety rule fired." }),
  );
}

function qualityCard(quality) {
  return el(
    "section",
    { class: "card alert-box", testid: "quality-problems", role: "alert" },
    el("h2", { text: "A better photo is needed" }),
    el(
      "ul",
      {},
      quality.problems.map((problem) =>
        el("li", { testid: "quality-problem", "data-kind": problem.kind, text: problem.message }),
      ),
    ),
  );
}

function summaryCard(narrative) {
  return el(
    "details",
    { class: "card", testid: "summary" },
    el("summary", { text: "Written summary of these findings" }),
    el("p", { class: "prewrap", text: narrative.summary }),
    narrative.fallback ? el("p", { class: "muted", text: `Note: ${narrative.fallback}` }) : null,
  );
}

function differentialCard(differential) {
  const set = differential.prediction_set;
  return card(
    "differential",
    "Differential",
    el("p", {
      class: "muted",
      testid: "probability-kind",
      text: `Probabilities: ${differential.probability_kind}`,
    }),
    set ? predictionSetLine(set) : null,
    differential.context.length
      ? el("p", { class: "muted", text: `Re-weighted by: ${differential.context.join(", ")}` })
      : null,
    el("ol", { class: "bars" }, differential.candidates.map(candidateBar)),
    Object.keys(differential.malignancy).length ? malignancyLine(differential.malignancy) : null,
    differential.image_only
      ? el(
          "details",
          { testid: "image-only" },
          el("summary", { text: "Differential from the image alone" }),
          el(
            "ol",
            {},
            differential.image_only.map((c) =>
              el("li", { text: `${c.name}: ${percent(c.probability)}` }),
            ),
          ),
        )
      : null,
  );
}

function predictionSetLine(set) {
  const measured =
    set.measured_coverage === null || set.measured_coverage === undefined
      ? ""
      : `; measured ${percent(set.measured_coverage)} on a test split`;
  return el(
    "p",
    { class: "set-note", testid: "prediction-set" },
    el("span", { class: "set-mark", "aria-hidden": "true", text: "◆" }),
    ` Prediction set: ${set.names.join(", ") || "empty"}. Sets like this contain the true ` +
      `diagnosis for about ${percent(set.coverage)} of images like those it was calibrated on ` +
      `(${set.calibrated_on}${measured}; ${set.method}); not a guarantee for one image.`,
  );
}

function candidateBar(candidate) {
  const fill = el("div", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, candidate.probability)) * 100}%`;
  return el(
    "li",
    {
      class: `candidate${candidate.in_prediction_set ? " in-set" : ""}`,
      testid: "candidate",
      "data-label": candidate.label,
      "data-in-set": String(candidate.in_prediction_set),
    },
    el(
      "div",
      { class: "bar-head" },
      el("span", { class: "name", testid: "candidate-name", text: candidate.name }),
      candidate.icd10cm
        ? el("span", {
            class: "code",
            testid: "candidate-code",
            title: "ICD-10-CM code",
            text: `ICD-10-CM ${candidate.icd10cm}`,
          })
        : null,
      candidate.in_prediction_set
        ? el("span", { class: "badge", testid: "in-set-badge", text: "◆ in prediction set" })
        : null,
      el("span", {
        class: "probability",
        testid: "candidate-probability",
        text: percent(candidate.probability),
      }),
    ),
    el("div", { class: "track", "aria-hidden": "true" }, fill),
    el("div", {
      class: "muted small",
      text: [candidate.category, words(candidate.malignancy)].filter(Boolean).join(" · "),
    }),
  );
}

function malignancyLine(malignancy) {
  const parts = Object.entries(malignancy)
    .sort((a, b) => b[1] - a[1])
    .map(([kind, p]) => `${words(kind)} ${percent(p)}`);
  return el("p", { class: "muted", testid: "malignancy", text: `By kind: ${parts.join(" · ")}` });
}

function conceptsCard(characteristics) {
  return card(
    "concepts",
    "Characteristics",
    el("p", { class: "muted", text: "Concept scores of the image (not probabilities)." }),
    el(
      "ul",
      { class: "chips" },
      characteristics.map((c) =>
        el(
          "li",
          {
            class: `chip${c.present ? " present" : ""}`,
            testid: "concept-chip",
            "data-concept": c.id,
            title: c.group,
          },
          el("span", { text: c.name }),
          el("span", { class: "score", text: c.score.toFixed(2) }),
        ),
      ),
    ),
  );
}

function patientPhrases(patient) {
  const out = [];
  for (const name of ["age", "sex", "site", "duration", "skin_type", "modality"]) {
    if (patient[name] !== null && patient[name] !== undefined) {
      out.push(`${words(name)}: ${patient[name]}`);
    }
  }
  for (const name of ["itch", "pain", "bleeding"]) {
    if (patient[name] !== null && patient[name] !== undefined) {
      out.push(`${name}: ${patient[name] ? "yes" : "no"}`);
    }
  }
  if (patient.evolution.length) out.push(`change: ${patient.evolution.map(words).join(", ")}`);
  if (patient.history.length) out.push(`history: ${patient.history.map(words).join(", ")}`);
  for (const note of patient.notes) out.push(`note: ${note}`);
  return out;
}

function patientCard(patient) {
  const phrases = patientPhrases(patient);
  return card(
    "patient",
    "Patient details",
    phrases.length
      ? el(
          "ul",
          { class: "chips plain" },
          phrases.map((p) => el("li", { class: "chip", text: p })),
        )
      : el("p", { class: "muted", text: "None given. Add them in a message below." }),
  );
}

function similarCard(similar) {
  return card(
    "similar-cases",
    "Similar reference cases",
    similar.length
      ? el(
          "ol",
          { class: "gallery" },
          similar.map((s) =>
            el(
              "li",
              { class: "similar", testid: "similar-case" },
              el("span", { class: "name", text: s.label ? words(s.label) : "unlabelled" }),
              s.caption ? el("span", { class: "muted small", text: s.caption }) : null,
              el("span", { class: "score", text: `similarity ${s.similarity.toFixed(2)}` }),
            ),
          ),
        )
      : el("p", { class: "muted", text: "No similar cases available on this server." }),
  );
}

function informationCard(information) {
  const rows = [
    ["what_it_is", "What it is"],
    ["usual_course", "Usual course"],
    ["treatments", "Treatments a clinician may consider"],
    ["when_to_seek_care", "When to seek care"],
  ];
  return card(
    "information",
    "Information",
    information.map((info) =>
      el(
        "details",
        { class: "info", testid: "information-item" },
        el("summary", { text: capitalise(info.name) }),
        el(
          "dl",
          {},
          rows.map(([key, label]) => [el("dt", { text: label }), el("dd", { text: info[key] })]),
        ),
      ),
    ),
  );
}

function limitationsCard(limitations) {
  return card(
    "limitations",
    "Limitations",
    el(
      "ul",
      {},
      limitations.map((l) =>
        el("li", { testid: "limitation", "data-kind": l.kind, text: l.message }),
      ),
    ),
  );
}

/** Show the stored photo of the case (fetched with the token); stays hidden if unavailable. */
async function loadCaseImage(caseId) {
  let blob;
  try {
    blob = await (await request(`/api/cases/${encodeURIComponent(caseId)}/image`)).blob();
  } catch {
    return;
  }
  const img = byId("case-photo");
  if (!img || state.caseId !== caseId) return;
  const url = URL.createObjectURL(blob);
  img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  img.src = url;
  img.hidden = false;
}

// ---------------------------------------------------------------- chat

function renderMessages() {
  byId("chat-messages").replaceChildren(...state.messages.map(messageItem));
}

function messageItem(message) {
  return el(
    "li",
    { class: `message ${message.role}`, testid: "chat-message", "data-role": message.role },
    el("span", { class: "who", text: message.role === "user" ? "You" : "Assistant" }),
    el("p", { class: "prewrap", text: message.content }),
  );
}

async function sendMessage(event) {
  event.preventDefault();
  const input = byId("chat-input");
  const text = input.value.trim();
  if (!text) return;
  const caseId = state.caseId;
  const form = event.currentTarget;
  const pending = messageItem({ role: "user", content: text });
  pending.classList.add("pending");
  byId("chat-messages").append(pending);
  input.value = "";
  setBusy(form, "chat-busy", true);
  let data;
  try {
    data = await api(`/api/cases/${encodeURIComponent(caseId)}/messages`, {
      method: "POST",
      json: { text },
    });
  } catch (error) {
    pending.remove();
    input.value = text;
    throw error;
  } finally {
    setBusy(form, "chat-busy", false);
  }
  if (state.caseId !== caseId) return;
  state.messages.push({ role: "user", content: text }, { role: "assistant", content: data.answer });
  renderMessages();
  if (data.report_updated) {
    state.report = data.report;
    renderReport(data.report, data.changed);
    renderDocuments();
  }
  input.focus();
}

// ---------------------------------------------------------------- documents

function renderDocuments() {
  const caseId = state.caseId;
  const base = `/api/cases/${encodeURIComponent(caseId)}`;
  const fhirTitle = "FHIR R4 bundle (JSON, for the health record)";
  byId("document-links").replaceChildren(
    ...DOCUMENTS.map(([kind, label]) =>
      el(
        "li",
        {},
        el("span", { text: label }),
        FORMATS.map(([fmt, fmtLabel]) =>
          documentLink(
            `${base}/documents/${kind}.${fmt}`,
            `dermfm-${caseId}-${kind}.${fmt}`,
            `doc-${kind}-${fmt}`,
            `${label} (${fmtLabel})`,
            fmtLabel,
          ),
        ),
      ),
    ),
    el(
      "li",
      {},
      el("span", { text: "FHIR R4 bundle" }),
      documentLink(`${base}/fhir`, `dermfm-${caseId}-fhir.json`, "doc-fhir", fhirTitle, "JSON"),
    ),
  );
}

function documentLink(path, filename, testid, title, text) {
  const link = el("a", {
    class: "button",
    href: path,
    download: filename,
    testid,
    title,
    "aria-label": title,
    text,
  });
  link.addEventListener("click", guarded((event) => downloadDocument(event, link, path)));
  return link;
}

/** The link's first click fetches the file with the token, points the link at a blob URL and
 * clicks it again, so the browser saves the file under the link's download name. */
async function downloadDocument(event, link, path) {
  if (link.dataset.ready) return;
  event.preventDefault();
  link.setAttribute("aria-busy", "true");
  let blob;
  try {
    blob = await (await request(path)).blob();
  } finally {
    link.removeAttribute("aria-busy");
  }
  const url = URL.createObjectURL(blob);
  link.href = url;
  link.dataset.ready = "1";
  link.click();
  setTimeout(() => {
    URL.revokeObjectURL(url);
    link.href = path;
    delete link.dataset.ready;
  }, BLOB_LIFETIME_MS);
}

// ---------------------------------------------------------------- case history

async function loadHistory() {
  const q = byId("history-search").value.trim();
  const query = new URLSearchParams({ limit: "50", offset: "0" });
  if (q) query.set("q", q);
  const data = await api(`/api/cases?${query}`);
  const shown = data.cases.length;
  const matching = q ? ` matching “${q}”` : "";
  let total = `${data.total} case${data.total === 1 ? "" : "s"}${matching}.`;
  if (!data.total) total = q ? `No cases match “${q}”.` : "No cases yet.";
  else if (shown < data.total) total = `Showing the newest ${shown} of ${data.total} cases.`;
  byId("history-total").textContent = total;
  byId("history-list").replaceChildren(...data.cases.map(historyItem));
}

function historyItem(summary) {
  let title = capitalise(summary.top_candidate) || "No differential";
  if (summary.status === "needs_better_photo") title = "Needs a better photo";
  return el(
    "li",
    { class: "card history-item", testid: "history-item", "data-case-id": summary.case_id },
    el(
      "button",
      {
        type: "button",
        class: "open",
        testid: "history-open",
        onclick: () => go(`#case/${encodeURIComponent(summary.case_id)}`),
      },
      el("span", {
        class: "name",
        text: title,
      }),
      summary.triage_level
        ? el("span", {
            class: `level-tag level-${summary.triage_level}`,
            text: capitalise(summary.triage_level),
          })
        : null,
      el("span", {
        class: "muted small",
        text: [
          `Case ${summary.case_id}`,
          baseName(summary.source),
          when(summary.updated || summary.created),
          summary.messages ? `${summary.messages} messages` : null,
        ]
          .filter(Boolean)
          .join(" · "),
      }),
    ),
    el("button", {
      type: "button",
      class: "danger",
      testid: "history-delete",
      "aria-label": `Delete case ${summary.case_id}`,
      text: "Delete",
      onclick: guarded(() => deleteCase(summary.case_id)),
    }),
  );
}

async function deleteCase(caseId) {
  const question = `Delete case ${caseId}? Its photo, messages and reports are removed.`;
  if (!window.confirm(question)) return;
  await api(`/api/cases/${encodeURIComponent(caseId)}`, { method: "DELETE" });
  if (state.caseId === caseId) forgetCase();
  await loadHistory();
}

// ---------------------------------------------------------------- start

function start() {
  byId("login-form").addEventListener("submit", guarded(signIn));
  byId("case-form").addEventListener("submit", guarded(submitCase));
  byId("pacs-form").addEventListener("submit", guarded(openStudy));
  byId("chat-form").addEventListener("submit", guarded(sendMessage));
  byId("history-form").addEventListener(
    "submit",
    guarded(async (event) => {
      event.preventDefault();
      await loadHistory();
    }),
  );
  byId("case-image").addEventListener("change", choosePhoto);
  byId("case-camera").addEventListener("change", choosePhoto);
  byId("nav-new").addEventListener("click", () => go("#new"));
  byId("nav-history").addEventListener("click", () => go("#history"));
  byId("sign-out").addEventListener("click", async () => {
    clearError();
    // revoke the token on the server too; sign out locally even if that fails
    await request("/api/logout", { method: "POST" }).catch(() => null);
    endSession();
    history.pushState(null, "", location.pathname);
  });
  byId("error-close").addEventListener("click", clearError);
  window.addEventListener("hashchange", guarded(route));
  guarded(async () => {
    // a stored token may have expired: a 401 here ends the session and shows sign-in
    if (session.token) session.save(session.token, await api("/api/me"));
    await route();
  })();
}

start();
