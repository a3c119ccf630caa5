// The page: send photos, follow each job live over its WebSocket (polling when the
// socket is unavailable), show the photo with every number outlined and labelled, explain
// rejections and failures, list past jobs. Plain JS, no build step.
"use strict";

const TERMINAL = new Set(["succeeded", "rejected", "failed", "canceled"]);
const STEPS = ["queued", "classify", "detect", "crop", "ocr"];
const SVG = "http://www.w3.org/2000/svg";
const drop = document.getElementById("drop");
const NO_ID = "00000000-0000-0000-0000-000000000000";
const thumbnailUrl = (id) => drop.dataset.thumbnailUrl.replace(NO_ID, id);

// -- small helpers --------------------------------------------------------------------

const pct = (x) => `${Math.round(x * 100)}%`;
const seconds = (t) => (Object.values(t || {}).reduce((a, b) => a + b, 0) / 1000).toFixed(1);
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `The server answered ${status}.`);
    this.status = status;
    this.body = body;
    this.code = body?.code || (status ? `http_${status}` : "network");
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      credentials: "same-origin",
      ...options,
      headers: { "X-CSRFToken": csrfToken(), Accept: "application/json", ...(options.headers || {}) },
    });
  } catch (e) {
    throw new ApiError(0, { code: "network", message: e.message });
  }
  let body = null;
  if (response.status !== 204) body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function announce(text) {
  const region = document.getElementById("announcer");
  // Emptied first, so that the same words said twice are announced twice.
  region.textContent = "";
  setTimeout(() => (region.textContent = text), 50);
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  // Plain HTTP on another host has no clipboard API; the old way still works there.
  const area = Object.assign(document.createElement("textarea"), { value: text, readOnly: true });
  area.style.cssText = "position:fixed;opacity:0;top:0;left:0";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("The browser refused to copy.");
}

function saveJson(job) {
  const blob = new Blob([JSON.stringify(job, null, 2) + "\n"], { type: "application/json" });
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(blob),
    download: `snapread-${job.id}.json`,
  });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// -- a card per photo -----------------------------------------------------------------

let cardCount = 0;

class JobCard {
  constructor(name) {
    this.el = document.getElementById("job-template").content.firstElementChild.cloneNode(true);
    this.$ = (selector) => this.el.querySelector(selector);
    const titleId = `job-title-${++cardCount}`;
    this.$(".job-title").id = titleId;
    this.el.setAttribute("aria-labelledby", titleId);
    this.$(".job-name").textContent = name;
    this.$(".track").setAttribute("aria-label", `Progress of ${name}`);
    this.job = null;
    this.reached = 0; // steps known done, kept when a job stops
    this.following = false;
    this.$(".cancel").addEventListener("click", () => this.cancel());
    this.$(".copy").addEventListener("click", () => this.copy());
    this.$(".download").addEventListener("click", () => saveJson(this.job));
    document.getElementById("current").prepend(this.el);
  }

  setThumbnail(src) {
    const img = this.$(".job-thumb");
    img.onerror = () => (img.hidden = true); // a file that is no image has no picture
    img.src = src;
    img.hidden = false;
  }

  setPhase(phase, label) {
    this.el.dataset.phase = phase;
    const badge = this.$(".status");
    badge.textContent = label ?? phase;
    badge.dataset.status = phase;
  }

  uploading() {
    this.setPhase("uploading");
    this.progress("uploading");
  }

  // The bar and the five steps: `done` steps complete, the next one current (or where
  // the job stopped).
  progress(phase) {
    let done = 0;
    let current = -1;
    let stopped = false;
    if (phase === "done") done = STEPS.length;
    else if (STEPS.includes(phase)) current = done = STEPS.indexOf(phase);
    else if (phase === "rejected") [done, current, stopped] = [2, 2, true];
    else if (phase === "refused") stopped = true;
    // A failed or canceled job stops where it was last seen; a failed one was taken by
    // a worker, so it was at least past the queue.
    else if (phase === "failed") {
      done = current = Math.max(this.reached, 1);
      stopped = true;
    } else if (phase !== "uploading") [done, current, stopped] = [this.reached, this.reached, true];
    this.reached = Math.max(this.reached, done);
    const track = this.$(".track");
    const fraction = current >= 0 && !stopped ? (done + 0.5) / STEPS.length : done / STEPS.length;
    this.$(".fill").style.width = `${Math.round(fraction * 100)}%`;
    track.dataset.state = stopped ? phase : phase === "done" ? "done" : "active";
    track.setAttribute("aria-valuenow", String(done));
    const text =
      phase === "done"
        ? "All 5 steps done"
        : stopped
          ? `Stopped after ${plural(done, "step", "steps")} of 5`
          : `Step ${Math.min(current + 1, 5)} of 5: ${DOING[phase]}`;
    const said = { uploading: DOING.uploading, refused: "Not sent" }[phase] ?? text;
    track.setAttribute("aria-valuetext", said);
    this.el.querySelectorAll(".stages li").forEach((li, i) => {
      li.className = i < done ? "done" : i === current ? (stopped ? "stopped" : "active") : "";
      if (i === current && !stopped) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    });
    this.$(".now").textContent = stopped || phase === "done" ? "" : DOING[phase] + "…";
  }

  explain(kind, { title, why, tryText, code }) {
    const box = this.$(".explain");
    box.dataset.kind = kind;
    this.$(".explain-title").textContent = title;
    this.$(".explain-why").textContent = why || "";
    this.$(".explain-why").hidden = !why;
    this.$(".explain-try span").textContent = tryText;
    this.$(".explain-code").textContent = code || "";
    box.hidden = false;
  }

  refused(error) {
    const known = REFUSED[error.code];
    this.setPhase("refused", "not sent");
    this.progress("refused");
    this.el.setAttribute("aria-busy", "false");
    const tryText = typeof known?.try === "function" ? known.try(error) : known?.try;
    this.explain("refused", {
      title: known?.title ?? "The photo was not accepted.",
      why: error.message,
      tryText: tryText ?? "Check the photo and send it again.",
      code: `Code: ${error.code}`,
    });
    announce(`${this.$(".job-name").textContent}: not sent. ${known?.title ?? error.message}`);
  }

  render(job) {
    const first = this.job === null;
    const before = this.el.dataset.phase;
    this.job = job;
    if (first) {
      this.$(".job-id").textContent = job.id.slice(0, 8);
      this.el.dataset.jobId = job.id;
    }
    const phase =
      job.status === "running" ? job.stage || "classify" : job.status === "succeeded" ? "done" : job.status;
    this.setPhase(phase, job.status === "running" ? `running · ${job.stage || "starting"}` : job.status);
    this.progress(phase);
    this.$(".cancel").hidden = TERMINAL.has(job.status);
    this.el.setAttribute("aria-busy", String(!TERMINAL.has(job.status)));
    const summary = this.$(".summary");
    summary.textContent = "";
    if (job.status === "succeeded") {
      const unread = job.regions.filter((r) => !r.text).length;
      summary.textContent = job.regions.length
        ? `Found ${plural(job.regions.length, "number", "numbers")} in ${seconds(job.timings_ms)} s` +
          (job.pack ? ` with ${job.pack.name} ${job.pack.version}.` : ".") +
          (unread ? " " + UNREAD(unread, job.regions.length) : "")
        : "This looks like a problem-book page, but no problem numbers were found on it. " +
          "Try a sharper photo, closer to the page.";
      this.showResult(job);
    } else if (job.status === "rejected") {
      this.explain("rejected", { ...REJECTED, why: REJECTED.why(job), tryText: REJECTED.try });
    } else if (job.status === "failed") {
      const known = FAILED[job.error?.code] ?? FAILED_OTHER;
      this.explain("failed", {
        title: known.title,
        why: known.why,
        tryText: known.try,
        code: `Code: ${job.error?.code ?? "unknown"}. ${job.error?.message ?? ""}`,
      });
    } else if (job.status === "canceled") {
      summary.textContent = "Canceled: nothing was read.";
    }
    if (phase !== before) this.announcePhase(job, phase);
  }

  announcePhase(job, phase) {
    const name = this.$(".job-name").textContent;
    if (phase === "done")
      announce(`${name}: done, ${plural(job.regions.length, "number", "numbers")} found.`);
    else if (phase === "rejected") announce(`${name}: ${REJECTED.title}`);
    else if (phase === "failed") announce(`${name}: ${(FAILED[job.error?.code] ?? FAILED_OTHER).title}`);
    else if (phase === "canceled") announce(`${name}: canceled.`);
    else if (phase === "queued") announce(`${name}: sent, waiting for a worker.`);
    else if (phase === "classify") announce(`${name}: reading started.`);
  }

  showResult(job) {
    const result = this.$(".result");
    if (!result.hidden) return;
    const img = this.$(".photo-img");
    img.src = job.image_url;
    img.alt = `Your photo, with the ${plural(job.regions.length, "number", "numbers")} found outlined and labelled`;
    img.width = job.width;
    img.height = job.height;
    const overlay = this.$(".overlay");
    drawOverlay(overlay, job);
    new ResizeObserver(() => drawOverlay(overlay, job)).observe(img);
    this.$(".photo figcaption").textContent = `${job.width} × ${job.height} pixels. Boxes show where each number was found, labelled with what was read.`;
    const rows = job.regions.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.index = String(r.index);
      const crop = document.createElement("img");
      if (r.crop_url) {
        crop.src = r.crop_url;
        crop.alt = `Crop of number ${r.index + 1}`;
        crop.loading = "lazy";
      }
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = r.text || "—";
      const confidence = document.createElement("span");
      confidence.className = r.confidence < 60 ? "confidence low" : "confidence";
      confidence.textContent = `${Math.round(r.confidence)}%`;
      if (r.confidence < 60) confidence.title = "Low confidence: check this one";
      const meter = document.createElement("span");
      meter.className = "meter";
      meter.setAttribute("aria-hidden", "true");
      meter.style.setProperty("--value", `${Math.max(0, Math.min(100, r.confidence))}%`);
      [String(r.index + 1), r.crop_url ? crop : "", text, [meter, confidence]].forEach((value) => {
        const td = document.createElement("td");
        td.append(...[value].flat());
        tr.append(td);
      });
      const box = () => this.el.querySelector(`.overlay [data-index="${r.index}"]`);
      tr.addEventListener("mouseenter", () => box()?.classList.add("hot"));
      tr.addEventListener("mouseleave", () => box()?.classList.remove("hot"));
      return tr;
    });
    this.$(".regions tbody").replaceChildren(...rows);
    this.$(".regions").hidden = !rows.length;
    this.$(".actions").hidden = !rows.length;
    result.hidden = false;
  }

  async copy() {
    const status = this.$(".action-status");
    const texts = this.job.regions.map((r) => r.text).filter(Boolean);
    try {
      await copyText(texts.join("\n"));
      status.textContent = `Copied ${plural(texts.length, "number", "numbers")}.`;
    } catch (e) {
      status.textContent = `Could not copy: ${e.message}`;
    }
  }

  async cancel() {
    try {
      this.render(await api(`/api/v1/jobs/${this.job.id}/cancel/`, { method: "POST" }));
    } catch (e) {
      this.$(".action-status").textContent = e.message;
    }
  }

  gone(message) {
    this.setPhase("gone", "gone");
    this.el.setAttribute("aria-busy", "false");
    this.$(".cancel").hidden = true;
    this.$(".summary").textContent = message;
  }

  // Live over the socket; every second or so over the API when the socket is refused or
  // drops before the job ends.
  follow() {
    if (this.following || TERMINAL.has(this.job.status)) return;
    this.following = true;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let socket;
    try {
      socket = new WebSocket(`${scheme}://${location.host}/ws/jobs/${this.job.id}/`);
    } catch (e) {
      return this.poll();
    }
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.el.dataset.live = "socket";
      if (message.type === "deleted") return this.gone("This job was deleted.");
      this.render(message.job);
      if (TERMINAL.has(message.job.status)) socket.close(1000);
    };
    socket.onclose = (event) => {
      if (event.code === 4404) return this.gone("This job no longer exists.");
      if (TERMINAL.has(this.job.status) || this.el.dataset.phase === "gone") return this.finished();
      this.poll();
    };
  }

  async poll() {
    this.el.dataset.live = "polling";
    let wait = 1000;
    while (!TERMINAL.has(this.job.status)) {
      await new Promise((resolve) => setTimeout(resolve, wait));
      try {
        this.render(await api(`/api/v1/jobs/${this.job.id}/`));
        wait = 1000;
      } catch (e) {
        if (e.status === 404) return this.gone("This job no longer exists.");
        if (e.status === 401 || e.status === 403)
          return this.gone("You are logged out: reload the page to log in again.");
        wait = Math.min(wait * 2, 10_000);
      }
    }
    this.finished();
  }

  finished() {
    this.following = false;
    recent.refresh();
  }
}

// Boxes in the photo's own pixels (the viewBox), so they scale with it; labels and lines
// sized in screen pixels, so they stay readable however small the photo is shown. Drawn
// again when the photo's shown size changes.
function drawOverlay(svg, job) {
  const shown = svg.previousElementSibling.clientWidth;
  const k = shown ? job.width / shown : 1; // photo pixels per CSS pixel
  const size = 12 * k;
  const gap = 4 * k;
  svg.setAttribute("viewBox", `0 0 ${job.width} ${job.height}`);
  const groups = job.regions.map((r) => {
    const [x0, y0, x1, y1] = r.box;
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", "region");
    g.dataset.index = String(r.index);
    g.dataset.text = r.text;
    const rect = document.createElementNS(SVG, "rect");
    const box = { x: x0, y: y0, width: x1 - x0, height: y1 - y0, "stroke-width": 1.5 * k };
    Object.entries(box).forEach(([name, value]) => rect.setAttribute(name, String(value)));
    // Left of the box (numbers start lines, so the margin is usually free), else right.
    const text = r.text || "?";
    const left = x0 - gap - text.length * size * 0.62 >= 0;
    const label = document.createElementNS(SVG, "text");
    const place = {
      x: left ? x0 - gap : x1 + gap,
      y: (y0 + y1) / 2,
      "text-anchor": left ? "end" : "start",
      "dominant-baseline": "central",
      "font-size": size,
      "stroke-width": size / 3.5,
    };
    Object.entries(place).forEach(([name, value]) => label.setAttribute(name, String(value)));
    label.textContent = text;
    g.append(rect, label);
    return g;
  });
  svg.replaceChildren(...groups);
}

// -- sending photos -------------------------------------------------------------------

const cards = new Map(); // job id -> JobCard

async function submit(files) {
  const images = [...files];
  if (!images.length) return;
  const pending = images.map((file) => {
    const card = new JobCard(file.name || "pasted image");
    card.setThumbnail(URL.createObjectURL(file));
    card.uploading();
    return [file, card];
  });
  announce(`Sending ${plural(images.length, "photo", "photos")}.`);
  for (const [file, card] of pending) {
    const form = new FormData();
    form.append("image", file);
    const key = crypto.randomUUID?.() || `${Date.now()}-${Math.random()}-${file.name}`;
    try {
      const job = await api("/api/v1/jobs/", { method: "POST", body: form, headers: { "Idempotency-Key": key } });
      cards.set(job.id, card);
      card.render(job);
      card.follow();
    } catch (e) {
      card.refused(e);
    }
  }
  recent.refresh();
}

function openJob(job) {
  let card = cards.get(job.id);
  if (!card) {
    card = new JobCard(`Photo of ${new Date(job.created_at).toLocaleString()}`);
    card.setThumbnail(thumbnailUrl(job.id));
    cards.set(job.id, card);
    card.render(job);
    card.follow();
  }
  card.el.scrollIntoView({ block: "start", behavior: "smooth" });
  card.$(".job-title").focus({ preventScroll: true });
}

// -- your recent jobs -----------------------------------------------------------------

const recent = {
  list: document.getElementById("recent"),
  more: document.getElementById("more"),
  next: null,

  async refresh() {
    try {
      const page = await api("/api/v1/jobs/?page_size=10");
      this.list.replaceChildren(...page.results.map((job) => this.item(job)));
      if (!page.results.length) this.list.innerHTML = '<li class="hint">No jobs yet: your photos will be listed here.</li>';
      this.setNext(page.next);
    } catch (e) {
      this.list.innerHTML = '<li class="hint">Could not load your jobs.</li>';
    }
    this.list.setAttribute("aria-busy", "false");
  },

  async loadMore() {
    if (!this.next) return;
    try {
      const page = await api(this.next);
      this.list.append(...page.results.map((job) => this.item(job)));
      this.setNext(page.next);
    } catch (e) {
      this.more.textContent = "Could not load more; try again";
    }
  },

  setNext(url) {
    // The API answers absolute URLs; only their path and query are used.
    this.next = url ? new URL(url, location.href).pathname + new URL(url, location.href).search : null;
    this.more.hidden = !this.next;
  },

  item(job) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "history-item";
    button.dataset.jobId = job.id;
    const thumb = Object.assign(document.createElement("img"), {
      className: "thumb",
      src: thumbnailUrl(job.id),
      alt: "",
      width: 56,
      height: 56,
      loading: "lazy",
    });
    const main = document.createElement("span");
    main.className = "history-main";
    const what = document.createElement("span");
    what.className = "history-what";
    const texts = job.regions.map((r) => r.text).filter(Boolean);
    what.textContent =
      job.status === "succeeded"
        ? `${plural(job.regions.length, "number", "numbers")}${texts.length ? ": " + texts.slice(0, 6).join(", ") + (texts.length > 6 ? ", …" : "") : ""}`
        : job.status === "rejected"
          ? "Not a problem-book page"
          : job.status === "failed"
            ? `Failed (${job.error?.code ?? "error"})`
            : job.status === "running"
              ? "Reading…"
              : job.status === "queued"
                ? "Waiting for a worker…"
                : "Canceled";
    const when = document.createElement("span");
    when.className = "history-when hint";
    when.textContent = `${new Date(job.created_at).toLocaleString()} · ${job.id.slice(0, 8)}`;
    main.append(what, when);
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = job.status;
    badge.textContent = job.status;
    button.append(thumb, main, badge);
    button.addEventListener("click", () => openJob(job));
    li.append(button);
    return li;
  },
};

// -- drop, choose, paste --------------------------------------------------------------

const input = document.getElementById("files");
document.getElementById("choose").addEventListener("click", () => input.click());
drop.addEventListener("click", (e) => {
  if (e.target === drop || e.target.classList.contains("drop-title")) input.click();
});
input.addEventListener("change", () => {
  const files = [...input.files];
  input.value = "";
  submit(files);
});
// Anywhere on the page takes a drop (a photo dropped beside the zone would otherwise
// make the browser leave the page to show it); the zone shows where.
let dragDepth = 0;
const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
document.addEventListener("dragenter", (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  dragDepth += 1;
  drop.classList.add("over");
});
document.addEventListener("dragover", (e) => {
  if (hasFiles(e)) e.preventDefault();
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) drop.classList.remove("over");
});
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  drop.classList.remove("over");
  if (e.dataTransfer?.files?.length) submit(e.dataTransfer.files);
});
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) submit(files);
});
recent.more.addEventListener("click", () => recent.loadMore());
recent.refresh();
