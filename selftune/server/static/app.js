// selftune dashboard: a static page that talks only to the public /v1 API with the user's key.
// No framework and no build step: a hash router, one render function per page, and uPlot
// (vendored) for the loss charts. Everything shown comes from the API, so a reload loses nothing.
"use strict";

const KEY_STORAGE = "selftune.apiKey";
// Every status machine comes from the server (selftune.statuses, via /statuses.js), never restated here.
const MACHINES = window.SELFTUNE_MACHINES;
const isFinal = (kind, status) => MACHINES[kind].terminal.includes(status);
const can = (kind, action, status) => MACHINES[kind].actions[action].includes(status);
const reached = (kind, action, status) => MACHINES[kind].targets[action] === status;
const POLL_MS = 1500;
let timers = [];      // cleared on every page change
let charts = [];      // uPlot instances to resize and destroy

// --- small helpers --------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const view = () => document.getElementById("view");
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const num = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString());
const fixed = (v, d = 3) => (typeof v === "number" ? v.toFixed(d) : "");
function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "";
  seconds = Math.round(seconds);
  const m = Math.floor(seconds / 60), s = seconds % 60, hr = Math.floor(m / 60);
  return hr ? `${hr}h ${m % 60}m` : m ? `${m}m ${String(s).padStart(2, "0")}s` : `${s}s`;
}
const badge = (status) => h("span", { class: `badge ${status}`, "data-status": status }, status);
const isFt = (id) => id.startsWith("ft:");
const every = (fn, ms = POLL_MS) => timers.push(setInterval(fn, ms));

function banner(message, kind = "error") {
  const el = document.getElementById("banner");
  el.hidden = !message;
  el.className = `banner ${kind}`;
  el.textContent = message || "";
}

// --- the API ----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.error = error;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${localStorage.getItem(KEY_STORAGE) || "local"}`, ...extra };
}

async function api(path, { method = "GET", body, form } = {}) {
  const init = { method, headers: headers() };
  if (form) init.body = form;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(`/v1${path}`, init);
  if (!r.ok) {
    let error = { message: `HTTP ${r.status}` };
    try { error = (await r.json()).error || error; } catch (_) { /* not JSON */ }
    if (r.status === 401) banner(`${error.message}\nEnter your API key at the top right.`);
    throw new ApiError(r.status, error);
  }
  return path.endsWith("/content") ? r.text() : r.json();
}

// Every page of a list (newest first), following the cursor.
async function all(path, limit = 100) {
  const out = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.data[page.data.length - 1].id;
  }
}

function guard(fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (e) {
      banner(e instanceof ApiError ? e.message : String(e));
    }
  };
}

// --- router -----------------------------------------------------------------------------------------

const routes = [
  [/^#\/jobs\/([^/?]+)$/, jobPage],
  [/^#\/jobs$/, jobsPage],
  [/^#\/new$/, newJobPage],
  [/^#\/files$/, filesPage],
  [/^#\/batches$/, batchesPage],
  [/^#\/models$/, modelsPage],
  [/^#\/evals\/([^/?]+)\/runs\/([^/?]+)$/, runPage],
  [/^#\/evals\/([^/?]+)$/, evalPage],
  [/^#\/evals$/, evalsPage],
  [/^#\/playground(\?.*)?$/, playgroundPage],
];

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  charts.forEach((c) => c.destroy());
  charts = [];
  banner("");
  const hash = location.hash || "#/jobs";
  const [re, page] = routes.find(([r]) => r.test(hash)) || routes[1];
  const match = hash.match(re) || [];
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", hash.startsWith(`#/${a.dataset.nav}`)));
  view().replaceChildren(h("p", { class: "muted" }, "Loading…"));
  await guard(page)(...match.slice(1));
}

// --- jobs -------------------------------------------------------------------------------------------

async function jobsPage() {
  const body = h("tbody");
  view().replaceChildren(
    h("div", { class: "row" }, h("h1", {}, "Fine-tuning jobs"), h("a", { href: "#/new" }, h("button", {}, "New job"))),
    h("div", { class: "card scroll" }, h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["job", "status", "base model", "suffix", "created", "trained tokens", "duration", "model"].map((c) => h("th", {}, c)))),
      body)),
  );
  const refresh = async () => {
    const jobs = (await api("/fine_tuning/jobs?limit=100")).data;
    body.replaceChildren(...(jobs.length ? jobs.map((j) => h("tr", { "data-job": j.id },
      h("td", { class: "mono" }, h("a", { href: `#/jobs/${j.id}` }, j.id)),
      h("td", {}, badge(j.status)),
      h("td", {}, j.model),
      h("td", {}, j.user_provided_suffix || ""),
      h("td", { class: "num" }, when(j.created_at)),
      h("td", { class: "num" }, num(j.trained_tokens)),
      h("td", { class: "num" }, duration((j.finished_at || Date.now() / 1000) - j.created_at)),
      h("td", { class: "mono" }, j.fine_tuned_model || ""),
    )) : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No jobs yet. ", h("a", { href: "#/new" }, "Start one.")))]));
  };
  await refresh();
  every(guard(refresh), 3000);
}

function lossChart(el, title, series) {
  const opts = {
    title, width: Math.max(280, el.clientWidth - 4), height: 240,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, {}],
    series: [{ label: "step" }, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: true, points: { show: false } }))],
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
  charts.push(chart);
  return chart;
}

function chartData(points, keys) {
  return [points.map((p) => p.step), ...keys.map((k) => points.map((p) => (typeof p[k] === "number" ? p[k] : null)))];
}

async function jobPage(id) {
  let job = await api(`/fine_tuning/jobs/${id}`);
  const seen = new Set();            // event ids already shown
  const head = h("div");
  const info = h("div", { class: "grid" });
  const lossEl = h("div", { class: "chart", id: "loss-chart" });
  const accEl = h("div", { class: "chart", id: "accuracy-chart" });
  const marginEl = h("div", { class: "chart", id: "margin-chart" });
  const dpo = (job.method || {}).type === "dpo";
  const rft = (job.method || {}).type === "reinforcement";
  const ckptBody = h("tbody");
  const log = h("div", { class: "events", id: "events" });
  const evalBox = h("div", { id: "eval" });
  const qualityBox = h("div", { id: "quality" });
  view().replaceChildren(...[
    head,
    qualityBox,
    h("div", { class: "card" }, info),
    h("div", { class: "two" }, h("div", { class: "card" }, lossEl), h("div", { class: "card" }, accEl)),
    dpo ? h("div", { class: "two" }, h("div", { class: "card" }, marginEl)) : null,
    h("h2", {}, "Checkpoints"),
    h("div", { class: "card scroll" }, h("table", { id: "checkpoints" }, h("thead", {}, h("tr", {},
      ["step", "model", "train loss", "valid loss", "full valid loss", dpo ? "valid reward accuracy" : rft ? "valid reward" : "valid accuracy", ""].map((c) => h("th", {}, c)))), ckptBody)),
    evalBox,
    h("h2", {}, "Events"),
    h("div", { class: "card" }, log),
  ].filter(Boolean));
  const loss = lossChart(lossEl, "Loss", [["train loss", "#2f6fdb"], ["validation loss", "#d9822b"]]);
  // DPO jobs chart what preference training moves: how often the preferred output wins, and by how much.
  // Reinforcement jobs chart the grader's reward: the mean over each step's sampled answers, and over
  // the validation prompts' answers every eval_interval steps.
  const acc = dpo
    ? lossChart(accEl, "Reward accuracy", [["train reward accuracy", "#1f8a4c"], ["validation reward accuracy", "#8e44ad"]])
    : rft ? lossChart(accEl, "Reward", [["train reward", "#1f8a4c"], ["validation reward", "#8e44ad"]])
    : lossChart(accEl, "Token accuracy", [["train accuracy", "#1f8a4c"], ["validation accuracy", "#8e44ad"]]);
  const margin = dpo ? lossChart(marginEl, "Reward margin", [["train margin", "#2f6fdb"], ["validation margin", "#d9822b"]]) : null;
  const accKeys = dpo ? ["train_reward_accuracy", "valid_reward_accuracy"]
    : rft ? ["train_reward_mean", "valid_reward_mean"] : ["train_mean_token_accuracy", "valid_mean_token_accuracy"];

  const action = (verb) => guard(async () => {
    job = await api(`/fine_tuning/jobs/${id}/${verb}`, { method: "POST", body: {} });
    renderHead();
  });
  function renderHead() {
    head.replaceChildren(
      h("h1", {}, job.id, " ", badge(job.status)),
      h("div", { class: "row" },
        h("button", { class: "secondary", id: "pause", disabled: !can("job", "pause", job.status), onclick: action("pause") }, "Pause"),
        h("button", { class: "secondary", id: "resume", disabled: !can("job", "resume", job.status), onclick: action("resume") }, "Resume"),
        h("button", { class: "danger", id: "cancel", disabled: !can("job", "cancel", job.status), onclick: action("cancel") }, "Cancel"),
        job.fine_tuned_model ? h("a", { href: `#/playground?b=${encodeURIComponent(job.fine_tuned_model)}&a=${encodeURIComponent(job.model)}` }, h("button", {}, "Compare in playground")) : null,
      ),
    );
    const hp = job.hyperparameters || {};
    const method = job.method || { type: "supervised" };
    const beta = ((method[method.type] || {}).hyperparameters || {}).beta;
    const item = (k, v) => h("div", {}, h("div", { class: "muted" }, k), h("div", { class: "mono" }, v === null || v === undefined || v === "" ? "—" : String(v)));
    info.replaceChildren(...[
      item("base model", job.model),
      item("fine-tuned model", job.fine_tuned_model),
      item("training file", job.training_file),
      item("validation file", job.validation_file),
      item("method", method.type === "dpo" ? `dpo (beta ${beta})` : rft ? `reinforcement (grader ${((method.reinforcement || {}).grader || {}).type})` : method.type),
      item("epochs · batch size · LR multiplier", `${hp.n_epochs} · ${hp.batch_size} · ${hp.learning_rate_multiplier}`),
      item("trained tokens", num(job.trained_tokens)),
      item("created", when(job.created_at)),
      item(job.finished_at ? "finished" : "estimated finish", job.finished_at ? `${when(job.finished_at)} (${duration(job.finished_at - job.created_at)})` : when(job.estimated_finish)),
      item("seed", job.seed),
      job.error && job.error.message ? item("error", `${job.error.code}: ${job.error.message}`) : null,
      job.quality && job.quality.best_checkpoint ? item(rft ? "best checkpoint (validation reward)" : "best checkpoint (validation loss)", job.quality.best_checkpoint) : null,
    ].filter(Boolean));
    // The quality guard's finding: a warning when the model came out worse than its base.
    const q = job.quality;
    qualityBox.replaceChildren(...(q ? [h("div", { class: `quality ${q.verdict}`, "data-verdict": q.verdict },
      h("strong", {}, q.verdict === "ok" ? "Quality check passed. " : "Warning: this model came out worse than its base. "), q.message)] : []));
  }

  let ordered = [];                  // newest first, in the API's order
  async function loadEvents() {
    // Newest first; page back until an event we already have, so no gap opens between polls.
    const fresh = [];
    let after = null;
    for (;;) {
      const page = await api(`/fine_tuning/jobs/${id}/events?limit=200${after ? `&after=${after}` : ""}`);
      const cut = page.data.findIndex((e) => seen.has(e.id));
      fresh.push(...(cut < 0 ? page.data : page.data.slice(0, cut)));
      if (cut >= 0 || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    fresh.forEach((e) => seen.add(e.id));
    ordered = fresh.concat(ordered);
    const byStep = new Map();
    for (const e of ordered) if (e.type === "metrics" && e.data && !byStep.has(e.data.step)) byStep.set(e.data.step, e.data);
    const points = [...byStep.values()].sort((a, b) => a.step - b.step);
    loss.setData(chartData(points, ["train_loss", "valid_loss"]));
    acc.setData(chartData(points, accKeys));
    if (margin) margin.setData(chartData(points, ["train_reward_margin", "valid_reward_margin"]));
    lossEl.dataset.points = marginEl.dataset.points = String(points.length);
    // Every message, and about 50 of the step lines (the chart has them all).
    const stride = Math.max(1, Math.ceil(points.length / 50));
    log.replaceChildren(...ordered.filter((e) => e.type !== "metrics" || e.data.step % stride === 0 || e.data.step === points.length)
      .map((e) => h("div", { class: e.level }, h("span", { class: "muted" }, new Date(e.created_at * 1000).toLocaleTimeString(), " "), e.message)));
  }

  async function loadCheckpoints() {
    const ckpts = await all(`/fine_tuning/jobs/${id}/checkpoints`);
    ckptBody.replaceChildren(...ckpts.map((c) => h("tr", {},
      h("td", { class: "num" }, c.step_number),
      h("td", { class: "mono" }, c.fine_tuned_model_checkpoint),
      h("td", { class: "num" }, fixed(c.metrics.train_loss)),
      h("td", { class: "num" }, fixed(c.metrics.valid_loss)),
      h("td", { class: "num" }, fixed(c.metrics.full_valid_loss)),
      h("td", { class: "num" }, fixed(dpo ? c.metrics.full_valid_reward_accuracy ?? c.metrics.valid_reward_accuracy
        : rft ? c.metrics.valid_reward_mean : c.metrics.full_valid_mean_token_accuracy ?? c.metrics.valid_mean_token_accuracy)),
      h("td", {}, reached("job", "succeed", job.status) ? h("a", { href: `#/playground?a=${encodeURIComponent(job.model)}&b=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "try") : ""),
    )));
  }

  async function loadEval() {
    for (const fid of job.result_files || []) {
      const f = await api(`/files/${fid}`);
      if (f.filename !== "eval_report.html") continue;
      const html = await api(`/files/${fid}/content`);
      // A sandboxed frame with no scripts: the report is our own page (no scripts), but it shows model output.
      // The same answers are an eval of the Evals API (its id in an event): link its side-by-side page.
      const events = await api(`/fine_tuning/jobs/${id}/events?limit=20`);
      const named = events.data.map((e) => /^Evaluation: eval (eval_\w+)/.exec(e.message)).find((m) => m);
      const link = named ? h("p", {}, h("a", { id: "job-eval", href: `#/evals/${named[1]}` }, "Each answer, graded, on the Evals page")) : "";
      evalBox.replaceChildren(h("h2", {}, "Evaluation: base vs fine-tuned"), link, h("iframe", { class: "report", sandbox: "allow-same-origin", srcdoc: html, title: "evaluation report" }));
      return;
    }
  }

  renderHead();
  await Promise.all([loadEvents(), loadCheckpoints()]);
  await loadEval();
  let final = isFinal("job", job.status);
  every(guard(async () => {
    if (final) return;
    job = await api(`/fine_tuning/jobs/${id}`);
    renderHead();
    await loadEvents();
    await loadCheckpoints();
    if (isFinal("job", job.status)) {
      final = true;
      await loadEvents();
      await loadEval();
    }
  }));
}

// --- new job ------------------------------------------------------------------------------------------

async function newJobPage() {
  const [files, models] = await Promise.all([all("/files?purpose=fine-tune"), api("/models")]);
  const fileOptions = (withNone) => [
    ...(withNone ? [h("option", { value: "" }, "none")] : []),
    ...files.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)),
  ];
  const training = h("select", { id: "training-file" }, fileOptions(false));
  const validation = h("select", { id: "validation-file" }, fileOptions(true));
  const model = h("select", { id: "model" }, models.data.map((m) => h("option", { value: m.id }, m.id)));
  const epochs = h("input", { id: "epochs", value: "auto", placeholder: "auto or a number" });
  const suffix = h("input", { id: "suffix", placeholder: "optional, e.g. support-bot" });
  const estimate = h("div", { class: "estimate card", id: "estimate" }, h("span", { class: "muted" }, "Pick a training file to see the estimate."));
  const upload = (select) => h("input", { type: "file", accept: ".jsonl,.json", onchange: guard(async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const f = await uploadFile(file, "fine-tune");
    if (!f) return;
    for (const s of [training, validation]) s.append(h("option", { value: f.id }, `${f.filename} (${f.id})`));
    select.value = f.id;
    refreshEstimate();
  }) });
  const hyper = () => {
    const e = epochs.value.trim();
    return { n_epochs: e === "" || e === "auto" ? "auto" : Number(e) };
  };
  const request = () => ({
    model: model.value,
    training_file: training.value,
    ...(validation.value ? { validation_file: validation.value } : {}),
    ...(suffix.value.trim() ? { suffix: suffix.value.trim() } : {}),
    method: { type: "supervised", supervised: { hyperparameters: hyper() } },
  });
  let seq = 0;
  const refreshEstimate = guard(async () => {
    if (!training.value) return;
    const mine = ++seq;
    estimate.replaceChildren(h("span", { class: "muted" }, "Estimating…"));
    try {
      const e = await api("/fine_tuning/jobs/estimate", { method: "POST", body: request() });
      if (mine !== seq) return;
      estimate.replaceChildren(
        h("div", {}, h("b", {}, num(e.examples)), " examples · ", h("b", {}, num(e.tokens_per_epoch)), " tokens per epoch · ",
          h("b", {}, e.n_epochs), " epochs · batch size ", e.batch_size, " · ", h("b", {}, num(e.steps)), " steps"),
        h("div", {}, "Trained tokens: ", h("b", {}, num(e.billed_tokens)), " · time: ",
          e.seconds ? h("b", {}, `about ${duration(e.seconds)}`) : h("span", { class: "muted" }, "unknown until a first job has run on this machine"),
          e.tokens_per_second ? h("span", { class: "muted" }, ` (${Math.round(e.tokens_per_second)} tokens/s, measured by ${e.throughput_source})`) : ""),
      );
    } catch (err) {
      if (mine === seq) estimate.replaceChildren(h("span", { class: "muted" }, `No estimate: ${err.message}`));
    }
  });
  for (const el of [training, model, epochs]) el.addEventListener("change", refreshEstimate);
  const submit = h("button", { id: "create", onclick: guard(async () => {
    submit.disabled = true;
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", body: request() });
      location.hash = `#/jobs/${job.id}`;
    } finally {
      submit.disabled = false;
    }
  }) }, "Create job");
  view().replaceChildren(
    h("h1", {}, "New fine-tuning job"),
    h("div", { class: "card form" },
      h("div", {}, h("label", { for: "training-file" }, "Training file"), training, h("label", {}, "or upload one"), upload(training)),
      h("div", {}, h("label", { for: "validation-file" }, "Validation file (optional: validation loss and an evaluation at the end)"), validation, h("label", {}, "or upload one"), upload(validation)),
      h("div", {}, h("label", { for: "model" }, "Base model (or an ft: model to continue)"), model),
      h("div", {}, h("label", { for: "epochs" }, "Epochs"), epochs),
      h("div", {}, h("label", { for: "suffix" }, "Suffix"), suffix),
    ),
    estimate,
    submit,
  );
  refreshEstimate();
}

// --- files --------------------------------------------------------------------------------------------

function problemsTable(error) {
  const problems = error.problems || [];
  if (!problems.length) return null;
  return h("div", { class: "scroll" }, h("table", { class: "problems", id: "problems" },
    h("thead", {}, h("tr", {}, ["line", "level", "problem", "key"].map((c) => h("th", {}, c)))),
    h("tbody", {}, problems.map((p) => h("tr", {}, h("td", { class: "num" }, p.line || "file"), h("td", { class: p.level }, p.level), h("td", {}, p.message), h("td", { class: "mono" }, p.key))))));
}

// Uploads one file; on a rejected file, shows the validator's report line by line and returns null.
async function uploadFile(file, purpose, reportEl) {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  try {
    const f = await api("/files", { method: "POST", form });
    banner(`Uploaded ${f.filename} as ${f.id}`, "info");
    if (reportEl) reportEl.replaceChildren();
    return f;
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    banner(e.message.split("\n")[0]);
    const table = problemsTable(e.error);
    if (reportEl && table) reportEl.replaceChildren(h("h2", {}, `${file.name} was rejected`), table);
    else if (table) view().append(table);
    return null;
  }
}

async function download(fileId, name) {
  const text = await api(`/files/${fileId}/content`);
  const a = h("a", { href: URL.createObjectURL(new Blob([text])), download: name });
  a.click();
  URL.revokeObjectURL(a.href);
}

async function filesPage() {
  const body = h("tbody");
  const report = h("div", { id: "upload-report" });
  const purpose = h("select", { id: "purpose" }, ["fine-tune", "batch", "assistants", "user_data"].map((p) => h("option", { value: p }, p)));
  const input = h("input", { type: "file", id: "file-input", multiple: true, onchange: guard(async (ev) => { await uploadAll(ev.target.files); ev.target.value = ""; }) });
  const drop = h("div", { class: "drop", id: "drop" }, "Drop JSONL files here, or ", input);
  async function uploadAll(list) {
    for (const file of list) await uploadFile(file, purpose.value, report);
    await refresh();
  }
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", guard(async (e) => { e.preventDefault(); drop.classList.remove("over"); await uploadAll(e.dataTransfer.files); }));
  async function refresh() {
    const files = await all("/files");
    body.replaceChildren(...files.map((f) => h("tr", { "data-file": f.id },
      h("td", { class: "mono" }, f.id), h("td", {}, f.filename), h("td", {}, f.purpose), h("td", { class: "num" }, num(f.bytes)),
      h("td", { class: "num" }, when(f.created_at)),
      h("td", { class: "row" }, h("button", { class: "secondary", onclick: guard(() => download(f.id, f.filename)) }, "Download"),
        h("button", { class: "danger", onclick: guard(async () => { if (confirm(`Delete ${f.filename}?`)) { await api(`/files/${f.id}`, { method: "DELETE" }); await refresh(); } }) }, "Delete")))));
  }
  view().replaceChildren(
    h("h1", {}, "Files"),
    h("div", { class: "card" }, h("div", { class: "row" }, h("label", { for: "purpose" }, "Purpose"), purpose), h("p", {}), drop, report),
    h("div", { class: "card scroll" }, h("table", { id: "files" }, h("thead", {}, h("tr", {}, ["id", "name", "purpose", "bytes", "created", ""].map((c) => h("th", {}, c)))), body)),
  );
  await refresh();
}

// --- batches: a purpose=batch file through POST /batches, followed until its files are ready ----------------

const ENDPOINTS = ["/v1/chat/completions", "/v1/responses", "/v1/completions"];

async function batchesPage() {
  const body = h("tbody");
  const input = h("select", { id: "batch-file", "aria-label": "batch input file" });
  const endpoint = h("select", { id: "batch-endpoint", "aria-label": "endpoint" }, ENDPOINTS.map((e) => h("option", { value: e }, e)));
  const upload = h("input", { type: "file", id: "batch-upload", onchange: guard(async (ev) => {
    const f = await uploadFile(ev.target.files[0], "batch", null);
    ev.target.value = "";
    if (f) await files(f.id);
  }) });
  async function files(select) {
    const list = await all("/files?purpose=batch");
    input.replaceChildren(...list.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
    if (select) input.value = select;
  }
  const start = h("button", { id: "start-batch", onclick: guard(async () => {
    if (!input.value) throw new Error("Upload a JSONL file of requests first (one {custom_id, method, url, body} per line).");
    await api("/batches", { method: "POST", body: { input_file_id: input.value, endpoint: endpoint.value, completion_window: "24h" } });
    await refresh();
  }) }, "Start batch");
  const fileButton = (id, label, name) => (id ? h("button", { class: "secondary", onclick: guard(() => download(id, name)) }, label) : null);
  function row(b) {
    const c = b.request_counts || {};
    const done = (c.completed || 0) + (c.failed || 0);
    const rows = [h("tr", { "data-batch": b.id },
      h("td", { class: "mono" }, b.id), h("td", { class: "mono" }, b.endpoint), h("td", {}, badge(b.status)),
      h("td", { class: "num progress" }, c.total ? `${num(done)} / ${num(c.total)}${c.failed ? ` (${num(c.failed)} failed)` : ""}` : ""),
      h("td", { class: "mono" }, b.model || ""), h("td", { class: "num" }, b.usage ? num(b.usage.total_tokens) : ""),
      h("td", { class: "num" }, when(b.created_at)),
      h("td", { class: "row" },
        fileButton(b.output_file_id, "Output", `${b.id}_output.jsonl`),
        fileButton(b.error_file_id, "Errors", `${b.id}_error.jsonl`),
        can("batch", "cancel", b.status) ? h("button", { class: "danger", onclick: guard(async () => {
          await api(`/batches/${b.id}/cancel`, { method: "POST" });
          await refresh();
        }) }, "Cancel") : null))];
    const errors = (b.errors && b.errors.data) || [];
    if (errors.length) {
      rows.push(h("tr", { class: "batch-errors" }, h("td", { colspan: 8 }, h("table", { class: "problems" },
        h("tbody", {}, errors.map((e) => h("tr", {}, h("td", { class: "num" }, e.line || "file"), h("td", { class: "error" }, e.code), h("td", {}, e.message))))))));
    }
    return rows;
  }
  async function refresh() {
    const batches = await all("/batches");
    body.replaceChildren(...batches.flatMap(row));
    return batches.some((b) => !isFinal("batch", b.status));
  }
  view().replaceChildren(
    h("h1", {}, "Batches"),
    h("div", { class: "card" },
      h("p", { class: "muted" }, "Run a file of requests in the background, beside interactive requests: one JSON object per line, {\"custom_id\", \"method\": \"POST\", \"url\", \"body\"}."),
      h("div", { class: "form" },
        h("div", {}, h("label", { for: "batch-file" }, "Input file (purpose batch)"), input),
        h("div", {}, h("label", { for: "batch-endpoint" }, "Endpoint"), endpoint),
        h("div", {}, h("label", { for: "batch-upload" }, "Upload a new one"), upload)),
      h("p", {}), start),
    h("div", { class: "card scroll" }, h("table", { id: "batches" }, h("thead", {}, h("tr", {}, ["id", "endpoint", "status", "answered", "model", "tokens", "created", ""].map((c) => h("th", {}, c)))), body)),
  );
  await files();
  await refresh();
  every(guard(refresh));
}

// --- evals: OpenAI's Evals API, its runs side by side and each output item ---------------------------

const pct = (n, total) => (total ? `${Math.round((100 * n) / total)}%` : "");
const criteriaNames = (ev) => ev.testing_criteria.map((c) => c.name);

async function evalsPage() {
  const evals = await all("/evals");
  view().replaceChildren(
    h("h1", {}, "Evals"),
    h("p", { class: "muted" }, "Created through the API (client.evals.create, then client.evals.runs.create per model); each eval's runs are compared on its page."),
    h("div", { class: "card scroll" }, h("table", { id: "evals" },
      h("thead", {}, h("tr", {}, ["name", "id", "testing criteria", "created"].map((c) => h("th", {}, c)))),
      h("tbody", {}, evals.map((ev) => h("tr", { "data-eval": ev.id },
        h("td", {}, h("a", { href: `#/evals/${ev.id}` }, ev.name)),
        h("td", { class: "mono" }, ev.id),
        h("td", {}, criteriaNames(ev).join(", ")),
        h("td", { class: "num" }, when(ev.created_at))))))),
  );
}

// One column per run (oldest first), so a base model's run sits beside the fine-tuned one's.
async function evalPage(evalId) {
  const ev = await api(`/evals/${evalId}`);
  const table = h("table", { id: "runs", class: "compare" });
  async function refresh() {
    const runs = await all(`/evals/${evalId}/runs?order=asc`);
    const cell = (fn) => runs.map((r) => h("td", { class: "num", "data-run": r.id }, fn(r)));
    const criterion = (name) => (r) => {
      const c = (r.per_testing_criteria_results || []).find((x) => x.testing_criteria === name);
      return c ? `${num(c.passed)} / ${num(c.passed + c.failed)} (${pct(c.passed, c.passed + c.failed)})` : "";
    };
    const tokens = (r) => num((r.per_model_usage || []).reduce((t, u) => t + u.total_tokens, 0));
    const rows = [
      ["model", (r) => r.model || "(given samples)"],
      ["status", (r) => badge(r.status)],
      ["items passed", (r) => `${num(r.result_counts.passed)} / ${num(r.result_counts.total)} (${pct(r.result_counts.passed, r.result_counts.total)})`],
      ["items failing", (r) => num(r.result_counts.failed)],
      ["items errored", (r) => num(r.result_counts.errored)],
      ...criteriaNames(ev).map((name) => [`passed: ${name}`, criterion(name)]),
      ["tokens", tokens],
      ["created", (r) => when(r.created_at)],
    ];
    table.replaceChildren(
      h("thead", {}, h("tr", {}, h("th", {}, "run"), runs.map((r) => h("th", {}, h("a", { href: `#/evals/${evalId}/runs/${r.id}` }, r.name))))),
      h("tbody", {}, rows.map(([label, fn]) => h("tr", { "data-row": label }, h("th", {}, label), cell(fn)))),
    );
    return runs.some((r) => !isFinal("run", r.status));
  }
  view().replaceChildren(
    h("h1", {}, ev.name),
    h("p", { class: "muted mono" }, ev.id),
    h("div", { class: "card scroll" }, runsNote(), table),
  );
  if (await refresh()) every(guard(refresh));
}
const runsNote = () => h("p", { class: "muted" }, "Each run's items pass when every testing criterion passes; the percentages compare the runs on the same items.");

async function runPage(evalId, runId) {
  const run = await api(`/evals/${evalId}/runs/${runId}`);
  const items = (await all(`/evals/${evalId}/runs/${runId}/output_items`)).sort((a, b) => a.datasource_item_id - b.datasource_item_id);
  const answer = (it) => ((it.sample && it.sample.output) || []).map((m) => m.content || "").join("\n");
  const counts = run.result_counts;
  view().replaceChildren(
    h("h1", {}, run.name),
    h("p", {}, h("a", { href: `#/evals/${evalId}` }, "all runs of this eval"), " ", badge(run.status), " ",
      h("span", { id: "run-counts" }, `${num(counts.passed)} passed, ${num(counts.failed)} failed, ${num(counts.errored)} errored of ${num(counts.total)}`)),
    run.error && run.error.message ? h("p", { class: "error" }, run.error.message) : null,
    h("div", { class: "card scroll" }, h("table", { id: "output-items" },
      h("thead", {}, h("tr", {}, ["#", "item", "answer", "status", "graders"].map((c) => h("th", {}, c)))),
      h("tbody", {}, items.map((it) => h("tr", { "data-item": it.datasource_item_id },
        h("td", { class: "num" }, it.datasource_item_id),
        h("td", { class: "mono" }, JSON.stringify(it.datasource_item)),
        h("td", {}, h("pre", {}, answer(it) || (it.sample && it.sample.error && it.sample.error.message) || "")),
        h("td", {}, h("span", { class: `badge ${it.status}`, "data-status": it.status }, it.status)),
        h("td", {}, it.results.map((r) => h("div", { class: r.passed ? "ok" : "error" }, `${r.name}: ${fixed(r.score, 2)}`))))))),
    ),
  );
}

// --- models -------------------------------------------------------------------------------------------

async function modelsPage() {
  const body = h("tbody");
  async function refresh() {
    const models = (await api("/models")).data;
    const base = models.find((m) => !isFt(m.id));
    body.replaceChildren(...models.map((m) => h("tr", {},
      h("td", { class: "mono" }, m.id),
      h("td", {}, isFt(m.id) ? "fine-tuned" : "base"),
      h("td", {}, m.owned_by),
      h("td", { class: "num" }, when(m.created)),
      h("td", { class: "row" },
        h("a", { href: `#/playground?a=${encodeURIComponent(isFt(m.id) && base ? base.id : m.id)}&b=${encodeURIComponent(m.id)}` }, "playground"),
        exportControl(m.id),
        isFt(m.id) ? h("button", { class: "danger", onclick: guard(async () => {
          if (!confirm(`Delete ${m.id}?`)) return;
          await api(`/models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
          await refresh();
        }) }, "Delete") : null),
    )));
  }
  view().replaceChildren(
    h("h1", {}, "Models"),
    h("div", { class: "card scroll" }, h("table", { id: "models" }, h("thead", {}, h("tr", {}, ["id", "kind", "owner", "created", ""].map((c) => h("th", {}, c)))), body)),
  );
  await refresh();
}

// Export: POST /exports, follow its progress, then save the archive. The download goes through
// fetch (the API key travels in a header, which a plain link cannot send), so the browser holds the
// archive in memory before saving it; for large models the CLI (`selftune export`) streams to disk.
const EXPORT_CHOICES = [
  ["gguf f16", { format: "gguf", quantize: "f16" }],
  ["gguf q8_0", { format: "gguf", quantize: "q8_0" }],
  ["gguf q4_k_m", { format: "gguf", quantize: "q4_k_m" }],
  ["ollama q8_0", { format: "ollama", quantize: "q8_0" }],
  ["merged (transformers)", { format: "merged" }],
  ["adapter (PEFT)", { format: "adapter" }],
];

function exportControl(model) {
  const choices = EXPORT_CHOICES.filter(([, c]) => isFt(model) || c.format !== "adapter");
  const pick = h("select", { class: "export-format", "aria-label": `export format for ${model}` },
    choices.map(([label], i) => h("option", { value: i }, label)));
  const state = h("span", { class: "muted export-state" });
  const button = h("button", { class: "export", onclick: guard(async () => {
    button.disabled = true;
    try {
      let e = await api("/exports", { method: "POST", body: { model, ...choices[pick.value][1] } });
      while (!isFinal("export", e.status)) {
        state.textContent = e.progress ? `${e.progress.stage} ${e.progress.done}/${e.progress.total}` : "starting";
        await new Promise((r) => setTimeout(r, 1000));
        e = await api(`/exports/${e.id}`);
      }
      if (!reached("export", "succeed", e.status)) throw new Error(`export failed: ${e.error ? e.error.message : e.status}`);
      state.textContent = `verified (${e.verification.reader}), downloading ${(e.bytes / 1e6).toFixed(0)} MB`;
      const r = await fetch(`/v1/exports/${e.id}/content`, { headers: headers() });
      if (!r.ok) throw new Error(`download failed: HTTP ${r.status}`);
      const link = h("a", { href: URL.createObjectURL(await r.blob()), download: `${e.folder}.tar` });
      link.click();
      URL.revokeObjectURL(link.href);
      state.textContent = `saved ${e.folder}.tar`;
    } catch (err) {
      state.textContent = "";
      throw err;
    } finally {
      button.disabled = false;
    }
  }) }, "Download");
  return h("span", { class: "row" }, pick, button, state);
}

// --- playground: one conversation, two models, streaming ------------------------------------------------

async function streamChat(model, messages, settings, onText) {
  const r = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ model, messages, stream: true, ...settings }),
  });
  if (!r.ok) {
    let error = { message: `HTTP ${r.status}` };
    try { error = (await r.json()).error || error; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, error);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of chunk.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const delta = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
        if (delta) onText((text += delta));
      }
    }
  }
  return text;
}

async function playgroundPage(query) {
  const params = new URLSearchParams((query || "").replace(/^\?/, ""));
  const models = (await api("/models")).data.map((m) => m.id);
  const base = models.find((m) => !isFt(m)) || models[0];
  const newest = models.filter((m) => isFt(m) && !m.includes(":ckpt-step-")).slice(-1)[0] || base;
  const pick = (id, chosen) => h("select", { id }, models.map((m) => h("option", { value: m, selected: m === chosen }, m)));
  const sides = [
    { select: pick("model-a", params.get("a") || base), history: [], pane: h("div", { class: "answers", id: "answers-a" }) },
    { select: pick("model-b", params.get("b") || newest), history: [], pane: h("div", { class: "answers", id: "answers-b" }) },
  ];
  const system = h("textarea", { id: "system", rows: 2, placeholder: "System message (optional)" });
  const prompt = h("textarea", { id: "prompt", rows: 3, placeholder: "Ask both models something" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", value: 256, min: 1, style: "width:90px" });
  const temperature = h("input", { id: "temperature", type: "number", value: 0, min: 0, max: 2, step: 0.1, style: "width:80px" });
  const send = h("button", { id: "send" }, "Send to both");
  const clear = h("button", { class: "secondary", onclick: () => sides.forEach((s) => { s.history = []; s.pane.replaceChildren(); }) }, "New conversation");
  send.addEventListener("click", guard(async () => {
    const text = prompt.value.trim();
    if (!text) return;
    prompt.value = "";
    send.disabled = true;
    const settings = { max_tokens: Number(maxTokens.value) || 256, temperature: Number(temperature.value) || 0 };
    try {
      await Promise.all(sides.map(async (s) => {
        s.history.push({ role: "user", content: text });
        const out = h("div", { class: "answer" });
        s.pane.append(h("div", { class: "turn" }, h("div", { class: "who" }, "you"), h("div", { class: "answer" }, text)),
          h("div", { class: "turn" }, h("div", { class: "who" }, s.select.value), out));
        const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), ...s.history];
        try {
          const reply = await streamChat(s.select.value, messages, settings, (t) => { out.textContent = t; });
          s.history.push({ role: "assistant", content: reply });
          out.dataset.done = "1";
        } catch (e) {
          out.textContent = `Error: ${e.message}`;
          out.dataset.done = "error";
          s.history.pop();
        }
      }));
    } finally {
      send.disabled = false;
    }
  }));
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send.click(); });
  view().replaceChildren(
    h("h1", {}, "Playground"),
    h("div", { class: "card" }, system, h("p", {}), prompt,
      h("div", { class: "row" }, send, clear, h("label", {}, "max tokens"), maxTokens, h("label", {}, "temperature"), temperature)),
    h("div", { class: "two" }, ...sides.map((s) => h("div", { class: "card" }, s.select, s.pane))),
  );
}

// --- start ----------------------------------------------------------------------------------------------

document.getElementById("key").value = localStorage.getItem(KEY_STORAGE) || "";
document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem(KEY_STORAGE, document.getElementById("key").value.trim());
  route();
});
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => charts.forEach((c) => c.setSize({ width: Math.max(280, c.root.parentElement.clientWidth - 4), height: 240 })));
route();
