// The web form: topics and preset questions from the API, answers streamed from /react/stream.
// Article text is untrusted: it is only ever set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let topics = [];

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("api_key").value;
  if (key) h["X-API-Key"] = key;
  return h;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// The form's own name for a request field, so messages say what the reader sees.
function labelOf(field) {
  if (field === "topic") return $("topic-field").querySelector("legend").textContent;
  const label = document.querySelector(`label[for="${CSS.escape(field)}"]`);
  return label ? label.textContent : field;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

const FIELDS = ["question", "topic", "model", "retriever_top_k", "screening_top_k", "verbose",
  "api_key"];

// A message with the request's field names (retriever_top_k, ...) replaced by the form's labels.
function withLabels(text) {
  return FIELDS.filter((f) => f.includes("_"))
    .reduce((t, f) => t.replaceAll(f, labelOf(f)), text);
}

// An error about a field, named by the form's label; the field is marked and shown.
function showError(field, message) {
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  const input = field && field !== "topic" ? $(field) : null;
  if (input) input.setAttribute("aria-invalid", "true");
  if (input && $("advanced").contains(input)) $("advanced").open = true;
  setStatus(field ? `${labelOf(field)}: ${withLabels(message)}` : withLabels(message), true);
}

// A server error body as (field, message): 422s name fields; 401 is about the key.
function fieldError(status, body) {
  if (status === 401) return ["api_key", "missing or wrong (ask the server's operator)"];
  if (status === 413) return ["question", "too long for the server"];
  let [field, message] = [null, String(body.detail || `the server answered HTTP ${status}`)];
  if (Array.isArray(body.errors) && body.errors.length) {
    [field, message] = [body.errors[0].field.split(".")[0], body.errors[0].message];
  } else {
    const match = /^(\w+): (.*)$/s.exec(message);
    if (match) [field, message] = [match[1], match[2]];
  }
  return FIELDS.includes(field) ? [field, message] : [null, message];
}

class RequestFailed extends Error {
  constructor(status, body) {
    super(String(body.detail || status));
    [this.field, this.reason] = fieldError(status, body);
  }
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new RequestFailed(response.status, body);
  return body;
}

function chosenTopic() {
  const checked = document.querySelector('input[name="topic"]:checked');
  return checked ? checked.value : "";
}

function showTopics() {
  const box = $("topics");
  box.replaceChildren();
  for (const [value, text] of [["", "All topics"], ...topics.map((t) => [t.topic, t.topic])]) {
    const label = element("label", null, "choice");
    const radio = element("input");
    radio.type = "radio";
    radio.name = "topic";
    radio.value = value;
    radio.checked = value === "";
    radio.addEventListener("change", showPresets);
    label.append(radio, ` ${text}`);
    box.appendChild(label);
  }
}

function showPresets() {
  const box = $("presets");
  box.replaceChildren();
  const chosen = topics.find((t) => t.topic === chosenTopic());
  const questions = chosen ? chosen.questions : topics.flatMap((t) => t.questions.slice(0, 1));
  for (const question of questions) {
    const button = element("button", question, "preset");
    button.type = "button";
    button.addEventListener("click", () => {
      $("question").value = question;
      $("question").focus();
      setStatus("Press Run to ask it.");
    });
    box.appendChild(button);
  }
  $("presets-field").hidden = questions.length === 0;
}

// Topics and models need the API key where the server asks for one (kept for this tab only).
async function loadLists() {
  try {
    topics = await getJSON("/topics");
    const models = await getJSON("/models");
    showTopics();
    $("model").replaceChildren();
    for (const m of models) {
      const option = element("option", `${m.name} (${m.kind})`);
      option.value = m.name;
      option.selected = m.default;
      $("model").appendChild(option);
    }
    showPresets();
    setStatus("");
  } catch (error) {
    if (error.field === "api_key") {
      showError("api_key", "enter the key to load the topics");
    } else {
      setStatus(`Cannot load the topics: ${error.message}`, true);
    }
  }
}

async function load() {
  const health = await getJSON("/health");
  for (const node of document.querySelectorAll(".needs-key")) node.hidden = !health.api_key_required;
  if (health.api_key_required) {
    $("api_key").value = sessionStorage.getItem("api_key") || "";
    $("advanced").open = !$("api_key").value;
  }
  await loadLists();
}

function highlight(n) {
  for (const li of document.querySelectorAll("#sources > li")) {
    li.classList.toggle("highlight", li.dataset.n === String(n));
  }
}

// The answer as text nodes with [n] turned into links to source n.
function renderAnswer(answer, cited) {
  const box = $("answer");
  box.replaceChildren();
  for (const part of answer.split(/(\[\d+\])/)) {
    const match = /^\[(\d+)\]$/.exec(part);
    const n = match ? Number(match[1]) : 0;
    if (cited.has(n)) {
      const link = element("a", part, "citation");
      link.href = `#source-${n}`;
      link.addEventListener("click", () => highlight(n));
      box.appendChild(link);
    } else {
      box.appendChild(document.createTextNode(part));
    }
  }
}

function safeUrl(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function scores(passage) {
  const parts = [["score", passage.score], ["BM25", passage.bm25], ["dense", passage.dense]]
    .filter(([, v]) => typeof v === "number").map(([k, v]) => `${k} ${v.toFixed(3)}`);
  return parts.join(" · ");
}

// One article: its number, title, authors, year and the passages found in it.
function sourceItem(s) {
  const li = element("li", null, s.cited ? "cited" : "uncited");
  li.id = `source-${s.n}`;
  li.dataset.n = String(s.n);
  li.value = s.n;
  const href = s.url ? safeUrl(s.url) : null;
  const title = element(href ? "a" : "span", s.title || "Untitled", "source-title");
  if (href) {
    title.href = href;
    title.rel = "noopener noreferrer";
    title.target = "_blank";
  }
  li.appendChild(title);
  const authors = Array.isArray(s.authors) ? s.authors.join(", ") : s.authors || "";
  const facts = [authors, s.year, s.topic, s.url && !href ? s.url : null]
    .filter((x) => x !== null && x !== undefined && x !== "");
  li.appendChild(element("div", facts.join(" · "), "meta"));
  for (const passage of s.passages || []) {
    const quote = element("blockquote", passage.text, "passage");
    quote.title = scores(passage);  // kept for the curious, out of the reader's way
    li.appendChild(quote);
  }
  return li;
}

function renderSources(sources) {
  const cited = sources.filter((s) => s.cited);
  const uncited = sources.filter((s) => !s.cited);
  $("sources").replaceChildren(...cited.map(sourceItem));
  $("sources-heading").hidden = cited.length === 0;
  $("uncited-sources").replaceChildren(...uncited.map(sourceItem));
  $("uncited").hidden = uncited.length === 0;
  $("uncited").open = false;
  $("uncited-summary").textContent = cited.length
    ? `Other retrieved sources, not cited (${uncited.length})`
    : `Retrieved sources, none cited (${uncited.length})`;
}

function addTraceStep(step) {
  const li = element("li");
  li.appendChild(element("span", `${step.kind}: `, "kind"));
  li.appendChild(document.createTextNode(step.text));
  if (step.reply !== undefined) {
    li.appendChild(element("div", "The model wrote:", "meta"));
    li.appendChild(element("pre", step.reply || "(nothing)", "reply"));
  }
  $("trace").appendChild(li);
}

function showResult(result) {
  renderSources(result.sources);
  renderAnswer(result.answer, new Set(result.sources.filter((s) => s.cited).map((s) => s.n)));
  const ms = result.timings.total_ms;
  const took = ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
  let by = `Answered by ${result.answered_by} in ${took}`;
  if (result.fallback) by += ` (the ${result.model} model was not used: ${result.fallback})`;
  $("answered-by").textContent = by;
  $("result").hidden = false;
  setStatus("");
}

function setBusy(busy, text) {
  $("submit").disabled = busy;
  $("submit").textContent = busy ? "Running…" : "Run";
  $("ask").setAttribute("aria-busy", String(busy));
  $("busy").hidden = !busy;
  if (text) $("busy-text").textContent = text;
}

// The form's own checks, named by its labels, before anything is sent.
function checkForm() {
  if (!/\w/.test($("question").value)) return ["question", "enter a question with words in it"];
  for (const id of ["retriever_top_k", "screening_top_k"]) {
    const input = $(id);
    const value = Number(input.value);
    if (!Number.isInteger(value) || value < Number(input.min) || value > Number(input.max)) {
      return [id, `must be a whole number from ${input.min} to ${input.max}`];
    }
  }
  if (Number($("screening_top_k").value) < Number($("retriever_top_k").value)) {
    return ["screening_top_k", "must be at least retriever_top_k"];
  }
  return null;
}

async function ask(event) {
  event.preventDefault();
  const problem = checkForm();
  if (problem) {
    showError(...problem);
    $(problem[0]).focus();
    return;
  }
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  const verbose = $("verbose").checked;
  const request = {
    question: $("question").value,
    topic: chosenTopic() || null,
    model: $("model").value || null,
    retriever_top_k: Number($("retriever_top_k").value),
    screening_top_k: Number($("screening_top_k").value),
    verbose: verbose,
  };
  $("result").hidden = true;
  $("trace").replaceChildren();
  $("trace-section").hidden = !verbose;
  setStatus("");
  setBusy(true, "Searching…");
  try {
    const response = await fetch("/react/stream", {
      method: "POST", headers: headers(), body: JSON.stringify(request),
    });
    if (!response.ok) {
      throw new RequestFailed(response.status, await response.json().catch(() => ({})));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines.filter((l) => l.trim())) {
        const message = JSON.parse(line);
        if (message.event === "step") {
          if (verbose) addTraceStep(message.step);
          setBusy(true, `Working: ${message.step.kind}…`);
        } else if (message.event === "result") {
          showResult(message);
        } else if (message.event === "error") {
          throw new Error(message.detail);
        }
      }
      if (done) break;
    }
  } catch (error) {
    if (error instanceof RequestFailed) showError(error.field, error.reason);
    else setStatus(`Error: ${error.message}`, true);
  } finally {
    setBusy(false);
  }
}

$("api_key").addEventListener("change", () => {
  sessionStorage.setItem("api_key", $("api_key").value);
  loadLists();
});
$("ask").addEventListener("submit", ask);
load().catch((error) => setStatus(`Cannot reach the server: ${error.message}`, true));
