// ugpu's page: drop songs, watch the queue and the GPUs (server-sent events), look at a chart while
// its song plays, download results.
// No framework and no CDN: it works offline, served by `ugpu serve`.
"use strict";

const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) { sessionStorage.setItem("ugpu-token", fromHash); history.replaceState(null, "", location.pathname); }
const token = sessionStorage.getItem("ugpu-token");
const $ = (selector) => document.querySelector(selector);

function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  return fetch(path, Object.assign({}, options, { headers }));
}

async function detail(response) {
  try { const body = await response.json(); return body.detail + (body.hint ? " (" + body.hint + ")" : ""); }
  catch (e) { return response.status + " " + response.statusText; }
}

function say(text, error = false) { const m = $("#message"); m.textContent = text; m.className = error ? "error" : ""; }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// -- gauges -------------------------------------------------------------------------------------------
function gauge(label, value, max, shown, budget) {
  const share = max ? Math.max(0, Math.min(1, value / max)) : 0;
  const level = share > 0.95 ? " bad" : share > 0.85 ? " warn" : "";
  const track = el("div", { class: "track" }, el("div", { class: "fill" + level, style: `width:${(share * 100).toFixed(1)}%` }));
  if (budget && max) track.append(el("div", { class: "budget", title: "the plan's VRAM budget", style: `left:${Math.min(100, budget / max * 100).toFixed(1)}%` }));
  return el("div", { class: "gauge" }, el("div", { class: "label" }, el("span", { text: label }), el("span", { text: shown })), track);
}

const na = (v, unit = "") => (v === null || v === undefined ? "n/a" : `${v}${unit}`);

function renderGpus(monitor) {
  const box = $("#gpus");
  box.replaceChildren();
  if (!monitor.gpu_detected) {
    const record = monitor.gpus[0] || {};
    box.append(el("div", { class: "card", id: "no-gpu" },
      el("h3", { text: "No GPU" }),
      el("p", { class: "muted", text: `This machine has no usable NVIDIA GPU (${record.note || "no GPU"}): songs convert on the CPU.` }),
      gauge("CPU", record.cpu_percent || 0, 100, na(record.cpu_percent, " %")),
      el("p", { text: `× real time of the running stage: ${monitor.processing_speed ? monitor.processing_speed.toFixed(2) : "n/a"}` })));
    return;
  }
  for (const g of monitor.gpus) {
    const total = g.vram_total || (g.vram_used || 0) + (g.vram_free || 0);
    box.append(el("div", { class: "card gpu", "data-gpu": g.gpu_index },
      el("h3", { text: `GPU ${g.gpu_index}: ${g.gpu_name || "?"}` + (g.lost ? " (lost)" : "") }),
      gauge("VRAM used / budget", g.vram_used || 0, total, `${na(g.vram_used, " MB")} of ${na(total, " MB")}, free ${na(g.vram_free, " MB")}` + (g.vram_budget_mb ? `, budget ${g.vram_budget_mb} MB` : ""), g.vram_budget_mb),
      gauge("utilisation", g.gpu_utilization || 0, 100, na(g.gpu_utilization, " %")),
      gauge("temperature", g.temperature || 0, 100, na(g.temperature, " °C")),
      gauge("power", g.power_draw_w || 0, g.power_limit_w || 0, `${na(g.power_draw_w, " W")} of ${na(g.power_limit_w, " W")}`),
      el("p", { text: `× real time of the running stage: ${monitor.processing_speed ? monitor.processing_speed.toFixed(2) : "n/a"}` })));
  }
}

// -- jobs -----------------------------------------------------------------------------------------------
function renderJobs(jobs) {
  const body = $("#jobs tbody");
  body.replaceChildren();
  if (!jobs.length) { body.append(el("tr", { class: "empty" }, el("td", { colspan: "8", class: "muted", text: "no songs yet" }))); return; }
  for (const job of jobs) {
    const fraction = job.status === "done" ? 1 : job.progress || 0;
    const actions = el("td");
    if (job.status === "done") {
      const look = el("button", { class: "view", text: "view" });
      look.addEventListener("click", () => view(job));
      const link = el("button", { class: "download", text: "download" });
      link.addEventListener("click", () => download(job));
      actions.append(look, " ", link);
    } else if (job.status === "queued" || job.status === "running") {
      const cancel = el("button", { class: "cancel", text: "cancel" });
      cancel.addEventListener("click", () => api(`/api/jobs/${job.id}`, { method: "DELETE" }));
      actions.append(cancel);
    }
    const stages = job.stages.map((s) => `${s.stage} ${s.speed_x ? s.speed_x.toFixed(1) + "x" : ""}`).join(", ");
    body.append(el("tr", { "data-job-id": job.id, title: job.error || stages },
      el("td", { text: job.name }),
      el("td", { class: `status status-${job.status}`, text: job.status }),
      el("td", { class: "stage", text: job.stage || (job.status === "done" ? stages : "") }),
      el("td", {}, el("div", { class: "progress" }, el("div", { style: `width:${(fraction * 100).toFixed(0)}%` }))),
      el("td", { text: job.speed_x ? job.speed_x.toFixed(2) : "" }),
      el("td", { text: job.device || "" }),
      el("td", { text: job.fallbacks.map((f) => `${f.stage}: ${f.from} → ${f.to}`).join("; ") }),
      actions));
  }
}

async function download(job) {
  const response = await api(job.download);
  if (!response.ok) { say(await detail(response), true); return; }
  const blob = await response.blob();
  const disposition = response.headers.get("content-disposition") || "";
  const name = disposition.match(/filename\*=utf-8''([^;]+)/i) || disposition.match(/filename="?([^";]+)"?/);
  const link = el("a", { href: URL.createObjectURL(blob), download: name ? decodeURIComponent(name[1]) : `${job.name}.zip` });
  document.body.append(link);
  link.click();
  setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 10000);
}

// -- the job view: the chart as ugpu drew it, the song playing, a cursor over the notes -------------------
let viewing = null;

async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await detail(response));
  return URL.createObjectURL(await response.blob());
}

function closeView() {
  const audio = $("#viewer-audio");
  audio.pause();
  for (const url of (viewing ? viewing.urls : [])) URL.revokeObjectURL(url);
  audio.removeAttribute("src");
  viewing = null;
  $("#viewer").hidden = true;
}

async function view(job) {
  const response = await api(`/api/jobs/${job.id}/view`);
  if (!response.ok) { say(await detail(response), true); return; }
  const data = await response.json();
  closeView();
  const shown = { id: job.id, pages: [], urls: [] };
  const box = $("#viewer-pages");
  box.replaceChildren();
  try {
    for (const page of data.pages) {
      const url = await blobUrl(page.url);
      shown.urls.push(url);
      const cursor = el("div", { class: "cursor", hidden: "" });
      box.append(el("div", { class: "page" }, el("img", { src: url, alt: `the chart of ${job.name}` }), cursor));
      shown.pages.push({ rows: page.rows, cursor });
    }
    if (!data.pages.length) box.append(el("p", { class: "muted", text: "this song has no preview (it ran with --no-preview)" }));
    if (data.audio) {
      const url = await blobUrl(data.audio);
      shown.urls.push(url);
      $("#viewer-audio").src = url;
    }
  } catch (e) { say(`${job.name}: ${e.message}`, true); }
  viewing = shown;
  $("#viewer-title").textContent = job.name;
  $("#viewer").hidden = false;
  $("#viewer").scrollIntoView({ block: "start" });
}

function moveCursor() {
  if (viewing) {
    const t = $("#viewer-audio").currentTime;
    for (const page of viewing.pages) {
      const row = page.rows.find((r) => t >= r.start_s && t < r.end_s);
      page.cursor.hidden = !row;
      if (!row) continue;
      const x = row.left + (t - row.start_s) / (row.end_s - row.start_s) * (row.right - row.left);
      Object.assign(page.cursor.style, { left: `${(x * 100).toFixed(3)}%`, top: `${(row.top * 100).toFixed(3)}%`,
        height: `${((row.bottom - row.top) * 100).toFixed(3)}%` });
    }
  }
  requestAnimationFrame(moveCursor);
}

async function upload(files) {
  for (const file of files) {
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("mode", $("#mode").value);
    if ($("#language").value.trim()) form.append("language", $("#language").value.trim());
    say(`uploading ${file.name}…`);
    const response = await api("/api/jobs", { method: "POST", body: form });
    if (!response.ok) { say(`${file.name}: ${await detail(response)}`, true); continue; }
    say(`${file.name} is queued`);
  }
  refreshJobs();
}

async function refreshJobs() {
  const response = await api("/api/jobs");
  if (response.ok) renderJobs((await response.json()).jobs);
}

// -- plan -------------------------------------------------------------------------------------------------
async function loadPlan() {
  const response = await api("/api/plan");
  const box = $("#plan");
  if (!response.ok) { box.replaceChildren(el("p", { class: "error", text: await detail(response) })); return; }
  box.replaceChildren();
  for (const worker of (await response.json()).workers) {
    const table = el("table", { class: "plan-table" });
    for (const [component, report] of Object.entries(worker.components)) {
      for (const [name, setting] of Object.entries(report.settings)) {
        table.append(el("tr", {}, el("td", { text: `${component} ${name}` }), el("td", { text: String(setting.value) }),
          el("td", { class: "reason", text: setting.reason })));
      }
    }
    const head = `${worker.worker}: ${worker.target.name}, ${worker.tier} tier, ${worker.mode}` + (worker.vram_budget_mb ? `, VRAM budget ${worker.vram_budget_mb} MB` : "");
    box.append(el("h3", { text: head }), table, ...worker.notes.map((n) => el("p", { class: "reason", text: "• " + n })));
  }
}

// -- wiring -------------------------------------------------------------------------------------------------
const drop = $("#drop");
$("#file-input").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const name of ["dragleave", "drop"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", (e) => upload([...e.dataTransfer.files]));
$("#viewer-close").addEventListener("click", closeView);
requestAnimationFrame(moveCursor);

function connect() {
  const events = new EventSource("/api/stream" + (token ? `?token=${encodeURIComponent(token)}` : ""));
  events.addEventListener("state", (e) => {
    const state = JSON.parse(e.data);
    $("#connection").textContent = "live";
    renderGpus(state.monitor);
    renderJobs(state.jobs);
  });
  events.onerror = () => { $("#connection").textContent = token || location.hostname === "127.0.0.1" || location.hostname === "localhost" ? "reconnecting…" : "not connected (open the URL with #token=…)"; };
}

loadPlan();
refreshJobs();
connect();
