// The page: upload photos, follow each job over its WebSocket (polling when the
// socket is unavailable), show the answer, list recent jobs. No build step.
"use strict";

const TERMINAL = new Set(["succeeded", "rejected", "failed", "canceled"]);
const STAGES = ["classify", "detect", "crop", "ocr"];
const views = new Map(); // job id -> element

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    ...options,
    headers: { "X-CSRFToken": csrfToken(), Accept: "application/json", ...(options.headers || {}) },
  });
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw Object.assign(new Error(body?.message || response.statusText), { body });
  return body;
}

function notice(text) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.hidden = !text;
}

function viewFor(job) {
  let el = views.get(job.id);
  if (!el) {
    el = document.getElementById("job-template").content.firstElementChild.cloneNode(true);
    el.querySelector(".job-id").textContent = job.id.slice(0, 8);
    el.querySelector(".cancel").addEventListener("click", () =>
      api(`/api/v1/jobs/${job.id}/cancel/`, { method: "POST" }).then(render).catch((e) => notice(e.message)),
    );
    document.getElementById("current").prepend(el);
    views.set(job.id, el);
  }
  return el;
}

function render(job) {
  const el = viewFor(job);
  const status = el.querySelector(".status");
  status.textContent = job.stage ? `${job.status} · ${job.stage}` : job.status;
  status.dataset.status = job.status;
  el.querySelector(".cancel").hidden = TERMINAL.has(job.status);
  const reached = job.status === "succeeded" ? STAGES.length : STAGES.indexOf(job.stage);
  el.querySelectorAll(".stages li").forEach((li, i) => {
    li.classList.toggle("done", i < reached);
    li.classList.toggle("active", i === reached && job.status === "running");
    if (i === reached && job.status === "running") li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
  });
  const summary = el.querySelector(".summary");
  if (job.status === "failed") summary.textContent = `Failed (${job.error.code}): ${job.error.message}`;
  else if (job.status === "rejected")
    summary.textContent = `Not a page we read: looks like “${job.classification.label}” (${pct(job.classification.score)}).`;
  else if (job.status === "succeeded")
    summary.textContent = `${job.regions.length} region(s) read in ${total(job.timings_ms)} ms with ${job.pack.name} ${job.pack.version}.`;
  else if (job.status === "canceled") summary.textContent = "Canceled.";
  else summary.textContent = job.status === "queued" ? "Waiting for a worker…" : "Reading…";
  if (job.status === "succeeded") showResult(el, job);
  return job;
}

function showResult(el, job) {
  const result = el.querySelector(".result");
  if (!result.hidden) return;
  if (job.annotated_url) el.querySelector(".annotated img").src = job.annotated_url;
  el.querySelector(".annotated figcaption").textContent = `${job.width} × ${job.height} pixels`;
  const rows = el.querySelector(".regions tbody");
  rows.replaceChildren(
    ...job.regions.map((r) => {
      const tr = document.createElement("tr");
      const img = document.createElement("img");
      img.src = r.crop_url;
      img.alt = `Crop of region ${r.index}`;
      img.loading = "lazy";
      [String(r.index), img, r.text || "—", `${Math.round(r.confidence)}%`].forEach((value) => {
        const td = document.createElement("td");
        td.append(value);
        tr.append(td);
      });
      return tr;
    }),
  );
  result.hidden = false;
}

const pct = (x) => `${Math.round(x * 100)}%`;
const total = (t) => Math.round(Object.values(t || {}).reduce((a, b) => a + b, 0));

function follow(job) {
  render(job);
  if (TERMINAL.has(job.status)) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let finished = false;
  try {
    const socket = new WebSocket(`${scheme}://${location.host}/ws/jobs/${job.id}/`);
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.job) render(message.job);
      if (message.job && TERMINAL.has(message.job.status)) {
        finished = true;
        socket.close();
        loadRecent();
      }
    };
    socket.onclose = () => { if (!finished) poll(job.id); };
  } catch (e) {
    poll(job.id);
  }
}

async function poll(id) {
  // The fallback when the socket is refused or drops: ask the API until it is done.
  for (;;) {
    try {
      const job = render(await api(`/api/v1/jobs/${id}/`));
      if (TERMINAL.has(job.status)) return loadRecent();
    } catch (e) {
      notice(e.message);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function submit(files) {
  notice("");
  for (const file of files) {
    const form = new FormData();
    form.append("image", file);
    try {
      follow(await api("/api/v1/jobs/", { method: "POST", body: form, headers: { "Idempotency-Key": crypto.randomUUID?.() || `${Date.now()}-${file.name}` } }));
    } catch (e) {
      notice(`${file.name}: ${e.message}`);
    }
  }
  loadRecent();
}

async function loadRecent() {
  const list = document.getElementById("recent");
  try {
    const page = await api("/api/v1/jobs/?page_size=10");
    list.replaceChildren(
      ...page.results.map((job) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.textContent = `${new Date(job.created_at).toLocaleString()} · ${job.id.slice(0, 8)}`;
        button.addEventListener("click", () => follow(job));
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.dataset.status = job.status;
        badge.textContent = job.status;
        li.append(button, " ", badge);
        return li;
      }),
    );
    if (!page.results.length) list.innerHTML = '<li class="hint">No jobs yet.</li>';
  } catch (e) {
    list.innerHTML = '<li class="hint">Could not load your jobs.</li>';
  }
}

const drop = document.getElementById("upload");
const input = document.getElementById("files");
input.addEventListener("change", () => submit([...input.files]).then(() => (input.value = "")));
["dragenter", "dragover"].forEach((t) =>
  drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }),
);
["dragleave", "drop"].forEach((t) =>
  drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }),
);
drop.addEventListener("drop", (e) => submit([...e.dataTransfer.files]));
loadRecent();
