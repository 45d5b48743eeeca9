// The type-ahead page: three suggestions from POST /predict for the text up to the caret,
// asked again on every keystroke. A text that does not end in a space gets completions of the
// word being typed; one that does gets next words (the API decides from the text alone).
"use strict";

const SUGGESTIONS = 3;
// A burst of keys (faster than this apart) makes one request, for its last key; typing at a
// person's pace still gets an answer for each key.
const DEBOUNCE_MS = 60;
const KEY_STORAGE = "nextword-api-key";

const $ = (id) => document.getElementById(id);
const text = $("text");
const list = $("suggestions");
const modelChoice = $("model");

let timer = null; // the debounce timer
let inFlight = null; // the AbortController of the request in flight
let shown = { completing: "", words: [] }; // what list shows, for the text in list.dataset.for
let takeWhenReady = false; // Tab was pressed before the answer for the current text came

class ApiError extends Error {}

/** GET or POST `path` (relative: the page may be served under a prefix) with the stored API
 * key; the JSON body, or an ApiError with the server's message. A 401 asks for the key. */
async function call(path, init = {}) {
  const headers = { ...init.headers };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, { ...init, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE); // no key, or a wrong one
    $("key-form").hidden = false;
    $("key").focus();
  }
  if (!response.ok) throw new ApiError(body.message ?? `${response.status} ${response.statusText}`);
  return body;
}

function showError(error) {
  if (error.name === "AbortError") return; // a newer request replaced this one
  takeWhenReady = false;
  $("error").textContent = error instanceof ApiError ? error.message : `no answer: ${error}`;
}

/** The text the suggestions are for: everything before the caret. */
const typed = () => text.value.slice(0, text.selectionStart);

function schedule(delay = DEBOUNCE_MS) {
  clearTimeout(timer);
  list.classList.add("stale"); // dimmed until the answer for the new text comes
  timer = setTimeout(ask, delay);
}

async function ask() {
  inFlight?.abort(); // its answer would be for an older text
  const controller = new AbortController();
  inFlight = controller;
  const before = typed();
  const body = { text: before, top_k: SUGGESTIONS };
  if (modelChoice.value) body.model = modelChoice.value;
  const started = performance.now();
  try {
    const answer = await call("predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (controller === inFlight) show(before, answer, performance.now() - started);
  } catch (error) {
    showError(error);
  }
}

function show(before, answer, milliseconds) {
  shown = { completing: answer.completing ?? "", words: answer.predictions.map((p) => p.word) };
  list.replaceChildren(...answer.predictions.map(suggestion));
  if (answer.predictions.length === 0) {
    const none = document.createElement("li");
    none.className = "none";
    none.textContent = `no word begins with “${shown.completing}”`;
    list.append(none);
  }
  list.dataset.for = before;
  list.classList.remove("stale");
  $("served").textContent = `${answer.model.name} version ${answer.model.version}`;
  $("round-trip").textContent = `round trip ${milliseconds.toFixed(1)} ms`;
  $("error").textContent = "";
  if (takeWhenReady) {
    takeWhenReady = false;
    take(0);
  }
}

function suggestion(prediction, index) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.word = prediction.word;
  button.textContent = prediction.word;
  const probability = document.createElement("small");
  probability.textContent = percent(prediction.probability);
  button.append(probability);
  // Clicking must not take the focus (and the caret) from the text.
  button.addEventListener("mousedown", (event) => event.preventDefault());
  button.addEventListener("click", () => take(index));
  const item = document.createElement("li");
  item.append(button);
  return item;
}

/** A probability as people read it: 57.1 %, never a rounded 100.0 % or 0.0 %. */
function percent(probability) {
  const value = probability * 100;
  if (value < 0.1) return "<0.1 %";
  if (value > 99.9) return ">99.9 %";
  return `${value.toFixed(1)} %`;
}

/** Put suggestion `index` in place of the word being typed, then a space: the next
 * suggestions are next words. Only for suggestions made for the text as it is now. */
function take(index) {
  const word = shown.words[index];
  if (word === undefined || list.dataset.for !== typed()) return;
  const start = text.selectionStart - shown.completing.length;
  text.setRangeText(`${word} `, start, text.selectionEnd, "end");
  text.focus();
  schedule(0);
}

text.addEventListener("input", () => {
  takeWhenReady = false;
  schedule();
});

// The caret moved (arrows, a click): the suggestions are for the text before it.
document.addEventListener("selectionchange", () => {
  if (document.activeElement === text && typed() !== list.dataset.for) schedule();
});

text.addEventListener("keydown", (event) => {
  if (event.key !== "Tab" || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) {
    return;
  }
  if (list.dataset.for === typed()) {
    if (shown.words.length === 0) return; // nothing to take: Tab moves the focus as usual
    event.preventDefault();
    take(0);
  } else {
    // Typed faster than the answer: take the first suggestion for this text when it comes.
    event.preventDefault();
    takeWhenReady = true;
    schedule(0);
  }
});

modelChoice.addEventListener("change", () => {
  text.focus();
  schedule(0);
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("key").value);
  $("key").value = "";
  $("key-form").hidden = true;
  start();
});

/** The models served (a choice when there are several), then suggestions for the text. */
async function start() {
  try {
    const served = await call("models");
    modelChoice.replaceChildren(
      ...served.models.map((model) => {
        const chosen = model.name === served.default;
        return new Option(`${model.name} (v${model.version})`, model.name, chosen, chosen);
      }),
    );
    $("model-choice").hidden = served.models.length < 2;
    schedule(0);
  } catch (error) {
    showError(error);
  }
}

start();
