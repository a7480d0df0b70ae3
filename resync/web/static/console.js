// The console's only script: confirmations, the Check Dependencies advice, and batch progress without reloading.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (e) => { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); });
  }
  const full = document.getElementById("full");
  if (full) full.addEventListener("change", () => {
    for (const box of document.querySelectorAll("input.pick")) box.checked = full.checked;
  });
  const deps = document.getElementById("deps"), advice = document.getElementById("deps-advice");
  if (deps && advice) deps.addEventListener("change", () => { advice.hidden = deps.checked; });
  const reload = document.querySelector("[data-reload]");
  if (reload) setTimeout(() => window.location.reload(), 1000 * Number(reload.dataset.reload));
  const box = document.getElementById("progress");
  if (box && box.dataset.active === "1") follow(box);
});

// Rate over the last samples (up to ten seconds), per object; ETA = what is left at that rate.
function follow(box) {
  const samples = [];
  const tick = async () => {
    const answer = await fetch(box.dataset.url, { credentials: "same-origin" });
    if (!answer.ok) return;
    const batch = await answer.json();
    samples.push({ t: batch.now, objects: Object.fromEntries((batch.objects || []).map((o) => [o.object, o.processed])) });
    while (samples.length > 2 && samples[samples.length - 1].t - samples[0].t > 10) samples.shift();
    const first = samples[0], last = samples[samples.length - 1];
    for (const o of batch.objects || []) {
      const row = box.querySelector(`tr[data-object="${o.object}"]`);
      if (!row) continue;
      const total = Math.max(o.expected, o.sent, 1);
      row.querySelector("progress").max = total;
      row.querySelector("progress").value = o.processed;
      row.querySelector(".n").textContent = `${o.processed} / ${Math.max(o.expected, o.sent)}`;
      row.querySelector(".e").textContent = o.errors;
      const rate = last.t > first.t ? (o.processed - (first.objects[o.object] || 0)) / (last.t - first.t) : 0;
      row.querySelector(".rate").textContent = rate > 0 ? `${Math.round(rate).toLocaleString()} rec/s` : "";
      const left = total - o.processed;
      row.querySelector(".eta").textContent = left <= 0 ? "done" : rate > 0 ? `${Math.ceil(left / rate)} s` : "";
    }
    document.getElementById("batch-status").textContent = batch.status;
    if (batch.active) setTimeout(tick, 1000);
  };
  tick();
}
