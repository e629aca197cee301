// Live updates of a running prediction: logs and output from the server's event stream.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("prediction");
  if (!root || !root.dataset.events) return;
  const status = document.getElementById("status");
  const logs = document.getElementById("logs");
  const live = document.getElementById("live-output");
  const streaming = root.dataset.streaming === "1";
  const source = new EventSource(root.dataset.events);
  const processing = () => {
    if (status.textContent === "starting") status.textContent = "processing";
  };
  source.addEventListener("logs", (event) => {
    processing();
    logs.textContent += event.data + "\n";
    logs.scrollTop = logs.scrollHeight;
  });
  source.addEventListener("output", (event) => {
    processing();
    if (streaming && live) live.textContent += event.data;
  });
  source.addEventListener("done", () => {
    source.close();
    // The finished page draws the output by kind, the error and the timings.
    window.location.reload();
  });
});
