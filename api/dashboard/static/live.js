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
      root.querySelector("#queue")?.remove();
      started(root);
    }
  };
  waiting(root, status);
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
    const page = await readPage();
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

// Read the page again once it runs, for the time it started (the server's, not this clock's).
async function started(root, attempt = 0) {
  const shown = root.querySelector("#started-at");
  if (!shown) return;
  try {
    const page = await readPage();
    const fresh = page.getElementById("started-at");
    if (fresh && fresh.textContent.trim() !== "-") {
      shown.replaceWith(document.importNode(fresh, true));
    } else if (attempt < 5) {
      setTimeout(() => started(root, attempt + 1), 500 * (attempt + 1));
    }
  } catch (err) {
    console.error("could not read the start time:", err);
  }
}

// While it has not started: why it waits and its place in line, read again every 2 s.
async function waiting(root, status) {
  if (!root.querySelector("#queue")) return;
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const shown = root.querySelector("#queue");
  if (!shown || !status || status.textContent !== "starting") return;
  try {
    const fresh = (await readPage()).getElementById("queue");
    if (fresh) shown.replaceWith(document.importNode(fresh, true));
    else shown.remove();
  } catch (err) {
    console.error("could not read the queue:", err);
  }
  waiting(root, status);
}

async function readPage() {
  const response = await fetch(window.location.href, {
    headers: { Accept: "text/html" },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return new DOMParser().parseFromString(await response.text(), "text/html");
}

// Copy buttons: a value in the page (data-copy-text) or a whole output (data-copy-url).
async function copy(button) {
  let text = button.dataset.copyText;
  if (text === undefined && button.dataset.copyUrl) {
    const response = await fetch(button.dataset.copyUrl, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    text = await response.text();
  }
  if (navigator.clipboard) {
    await navigator.clipboard.writeText(text || "");
  } else {
    // Plain http on another host is no secure context: no Clipboard API there.
    const area = document.createElement("textarea");
    area.value = text || "";
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.classList.add("copied");
  setTimeout(() => button.classList.remove("copied"), 2000);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (button) copy(button).catch((err) => console.error("could not copy:", err));
});

// Relative times ("3 minutes ago") move on while the page stays open.
function relative(seconds) {
  if (seconds < 2) return "just now";
  const units = [[86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]];
  for (const [size, unit] of units) {
    if (seconds >= size) {
      const count = Math.floor(seconds / size);
      return `${count} ${unit}${count === 1 ? "" : "s"} ago`;
    }
  }
  return "just now";
}

function tick() {
  document.querySelectorAll("time[datetime]").forEach((time) => {
    const seconds = (Date.now() - Date.parse(time.getAttribute("datetime"))) / 1000;
    if (seconds >= 0 && seconds < 30 * 86400) time.textContent = relative(seconds);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(follow);
  setInterval(tick, 15000);
});
