// Live pages (a running prediction or training): logs, status and streamed output from the
// server's event stream; at the end, the finished page's part swapped in, without a reload.
"use strict";

function follow(root) {
  if (!root.dataset.events) return;
  const status = root.querySelector("#status");
  const logs = root.querySelector("#logs");
  const live = root.querySelector("#live-output");
  const streaming = root.dataset.streaming === "1";
  const source = new EventSource(root.dataset.events);
  const processing = () => {
    if (status && status.textContent === "starting") {
      status.textContent = "processing";
      status.className = "status status-processing";
    }
  };
  source.addEventListener("logs", (event) => {
    processing();
    if (!logs) return;
    const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.textContent += event.data + "\n";
    if (atBottom) logs.scrollTop = logs.scrollHeight;
  });
  source.addEventListener("output", (event) => {
    processing();
    if (streaming && live) live.textContent += event.data;
  });
  source.addEventListener("done", () => {
    source.close();
    finish(root);
  });
}

// The finished state (output by kind, error, timings, buttons) drawn by the server: the same
// page read again, and its live part put in place of this one.
async function finish(root, attempt = 0) {
  try {
    const response = await fetch(window.location.href, {
      headers: { Accept: "text/html" },
      credentials: "same-origin",
      cache: "no-store",
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById(root.id);
    if (!fresh) throw new Error(`no #${root.id} in the page`);
    const adopted = document.importNode(fresh, true);
    root.replaceWith(adopted);
    follow(adopted); // still running (a late read): follow on from where it is
  } catch (err) {
    if (attempt < 5) setTimeout(() => finish(root, attempt + 1), 1000 * (attempt + 1));
    else console.error("could not show the finished state:", err);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(follow);
});
