// The "MNIST review" page's keyboard and buttons, served by plugins/mnist_review.py as review.js.
//
// One image is focused (class `focused`): 0-9 label it, x or Delete discards it, the arrows and
// j/k move. An action hides the image and focuses the next at once, so a person can type a label
// per image without waiting for the store; if the server refuses, the image comes back with the
// reason. Requests are same-origin and relative (the UI may sit under a sub-path): the browser
// sends the UI's session cookie with them, which is how Airflow authenticates the page.
"use strict";

const waiting = document.getElementById("waiting");
const statusLine = document.getElementById("status");
let focused = null;

function items() {
  return Array.from(document.querySelectorAll("[data-review-key]:not(.pending)"));
}

function focusItem(item) {
  if (focused) focused.classList.remove("focused");
  focused = item;
  if (!item) return;
  item.classList.add("focused");
  item.focus({ preventScroll: true });
  item.scrollIntoView({ block: "nearest" });
}

function move(step) {
  const shown = items();
  const next = shown[shown.indexOf(focused) + step];
  if (next) focusItem(next);
}

async function act(item, action, digit) {
  const shown = items();
  const index = shown.indexOf(item);
  item.classList.add("pending");
  if (item === focused) focusItem(shown[index + 1] || shown[index - 1] || null);
  const body = { key: item.dataset.reviewKey };
  if (action === "label") body.digit = digit;
  let response;
  try {
    response = await fetch(action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (error) {
    fail(item, `${action} failed: the server did not answer (${error.message})`);
    return;
  }
  if (response.ok || response.status === 404) {
    // 404: someone else labelled or discarded it meanwhile; it is no longer waiting either way.
    if (response.status === 404) statusLine.textContent = await reason(response);
    remove(item);
  } else if (response.status === 401) {
    fail(item, "your login has expired: reload the page to log in again");
  } else {
    fail(item, `${action} failed: ${await reason(response)}`);
  }
}

async function reason(response) {
  try {
    const detail = (await response.json()).detail;
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function remove(item) {
  const run = item.closest("section");
  item.remove();
  if (run && !run.querySelector("[data-review-key]")) run.remove();
  waiting.dataset.count = Number(waiting.dataset.count) - 1;
  waiting.textContent = waiting.dataset.count;
  if (!document.querySelector("[data-review-key]")) document.getElementById("done").hidden = false;
}

function fail(item, message) {
  const error = item.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
  item.classList.remove("pending");
  statusLine.textContent = `${item.dataset.reviewKey}: ${message}`;
  if (!focused) focusItem(item);
}

document.addEventListener("keydown", (event) => {
  // The browser's own shortcuts stay its own.
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (/^[0-9]$/.test(key)) {
    // A held key would otherwise label image after image.
    if (focused && !event.repeat) act(focused, "label", Number(key));
  } else if (key === "x" || key === "Delete") {
    if (focused && !event.repeat) act(focused, "discard");
  } else if (key === "ArrowDown" || key === "ArrowRight" || key === "j") {
    move(1);
  } else if (key === "ArrowUp" || key === "ArrowLeft" || key === "k") {
    move(-1);
  } else {
    return;
  }
  event.preventDefault();
});

document.addEventListener("click", (event) => {
  const item = event.target.closest("[data-review-key]");
  if (!item) return;
  const button = event.target.closest("button[data-action]");
  if (button) act(item, button.dataset.action, Number(button.dataset.digit));
  else focusItem(item);
});

focusItem(items()[0] || null);
