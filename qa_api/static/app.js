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

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function showPresets() {
  const box = $("presets");
  box.replaceChildren();
  const chosen = topics.find((t) => t.topic === $("topic").value);
  const questions = chosen ? chosen.questions : topics.flatMap((t) => t.questions.slice(0, 1));
  for (const question of questions) {
    const button = element("button", question, "preset");
    button.type = "button";
    button.addEventListener("click", () => {
      $("question").value = question;
      $("ask").requestSubmit();
    });
    box.appendChild(button);
  }
}

// Topics and models need the API key where the server asks for one (kept for this tab only).
async function loadLists() {
  try {
    topics = await getJSON("/topics");
    const models = await getJSON("/models");
    $("topic").replaceChildren(element("option", "All topics"));
    $("topic").firstChild.value = "";
    for (const t of topics) {
      const option = element("option", t.topic);
      option.value = t.topic;
      $("topic").appendChild(option);
    }
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
    const hint = $("api_key").hidden ? "" : " (enter the API key under Advanced settings)";
    setStatus(`Cannot load topics: ${error.message}${hint}`, true);
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
  for (const li of $("sources").children) li.classList.toggle("highlight", li.dataset.n === String(n));
}

// The answer as text nodes with [n] turned into links to source n.
function renderAnswer(answer, count) {
  const box = $("answer");
  box.replaceChildren();
  const parts = answer.split(/(\[\d+\])/);
  for (const part of parts) {
    const match = /^\[(\d+)\]$/.exec(part);
    const n = match ? Number(match[1]) : 0;
    if (n >= 1 && n <= count) {
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

function renderSources(sources) {
  const list = $("sources");
  list.replaceChildren();
  for (const s of sources) {
    const li = element("li", null, s.cited ? "cited" : "");
    li.id = `source-${s.n}`;
    li.dataset.n = String(s.n);
    const href = s.url ? safeUrl(s.url) : null;
    const title = element(href ? "a" : "span", s.title || "Untitled", "source-title");
    if (href) {
      title.href = href;
      title.rel = "noopener noreferrer";
      title.target = "_blank";
    }
    li.appendChild(title);
    const authors = Array.isArray(s.authors) ? s.authors.join(", ") : s.authors || "";
    const facts = [authors, s.year, s.topic, s.url && !href ? s.url : null, s.article_id]
      .filter((x) => x !== null && x !== undefined && x !== "");
    const score = typeof s.score === "number" ? ` · score ${s.score.toFixed(3)}` : "";
    li.appendChild(element("div", facts.join(" · ") + score, "meta"));
    li.appendChild(element("p", s.text, "passage"));
    list.appendChild(li);
  }
}

function addTraceStep(step) {
  const li = element("li");
  li.appendChild(element("span", `${step.kind}: `, "kind"));
  li.appendChild(document.createTextNode(step.text));
  $("trace").appendChild(li);
}

function showResult(result) {
  renderSources(result.sources);
  renderAnswer(result.answer, result.sources.length);
  let by = `Answered by ${result.answered_by} in ${(result.timings.total_ms / 1000).toFixed(1)} s`;
  if (result.fallback) by += ` (the ${result.model} model was not used: ${result.fallback})`;
  $("answered-by").textContent = by;
  $("result").hidden = false;
  setStatus("");
}

async function ask(event) {
  event.preventDefault();
  const verbose = $("verbose").checked;
  const request = {
    question: $("question").value,
    topic: $("topic").value || null,
    model: $("model").value || null,
    retriever_top_k: Number($("retriever_top_k").value),
    screening_top_k: Number($("screening_top_k").value),
    verbose: verbose,
  };
  $("result").hidden = true;
  $("trace").replaceChildren();
  $("trace-section").hidden = !verbose;
  $("submit").disabled = true;
  setStatus("Searching and thinking…");
  try {
    const response = await fetch("/react/stream", {
      method: "POST", headers: headers(), body: JSON.stringify(request),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.detail || response.statusText);
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
          setStatus(`Working: ${message.step.kind}…`);
        } else if (message.event === "result") {
          showResult(message);
        } else if (message.event === "error") {
          throw new Error(message.detail);
        }
      }
      if (done) break;
    }
  } catch (error) {
    setStatus(`Error: ${error.message}`, true);
  } finally {
    $("submit").disabled = false;
  }
}

$("topic").addEventListener("change", showPresets);
$("api_key").addEventListener("change", () => {
  sessionStorage.setItem("api_key", $("api_key").value);
  loadLists();
});
$("ask").addEventListener("submit", ask);
load().catch((error) => setStatus(`Cannot reach the server: ${error.message}`, true));
