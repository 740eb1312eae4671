// The async-query dashboard: plain JavaScript, no framework, no network
// access beyond the router that served it. Every request carries the
// browser's credentials, so the host's principal resolver sees the page's
// requests as it sees the API's.
"use strict";

(() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const api = meta("async-query-api");
  const formats = meta("async-query-formats").split(",").filter(Boolean);
  const maxAsyncAfter = Number(meta("async-query-max-async-after")) || 0;
  const MEDIA = "application/vnd.api+json";
  const PAGE_SIZE = 100;
  const POLL_MS = 2000;
  const OVERVIEW_MS = 5000;
  const ACTIVE = new Set(["QUEUED", "PROCESSING"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    jobs: new Map(), // id -> resource object
    // Per collection, the next page's link, or null once all is loaded.
    next: { asyncQuery: null, tableExport: null },
    admin: false,
    cursor: null, // last event id seen, as a string
    source: null,
    pollTimer: null,
    overviewTimer: null,
    overviewDue: null,
  };

  // ---- HTTP -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail, code) {
      super(detail);
      this.status = status;
      this.code = code;
    }
  }

  // `path` under the API's mount point.
  function call(method, path, body) {
    return request(method, api + path, body);
  }

  // `url` as the server wrote it (a listing's `links.next`).
  async function request(method, url, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: MEDIA } };
    if (body !== undefined) {
      init.headers["Content-Type"] = MEDIA;
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, `the server cannot be reached (${e.message})`, "network");
    }
    const text = await response.text();
    let document = null;
    try {
      document = text ? JSON.parse(text) : null;
    } catch (_) {
      // not JSON: reported below
    }
    if (!response.ok) {
      const error = document && document.errors && document.errors[0];
      throw new ApiError(
        response.status,
        error ? error.detail || error.title : `HTTP ${response.status}`,
        error ? error.code : undefined,
      );
    }
    return document;
  }

  // ---- small helpers ----------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return el("time", { datetime: iso, title: iso }, date.toLocaleString());
  }

  function shortId(id) {
    return id.slice(0, 8);
  }

  function problem(message) {
    const box = $("problem");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function announce(message) {
    $("announce").textContent = message;
  }

  function setMode(mode, text) {
    const badge = $("connection");
    badge.dataset.mode = mode;
    badge.textContent = text;
  }

  // ---- jobs -------------------------------------------------------------

  function listPath(collection) {
    const query = new URLSearchParams({ sort: "-createdOn", "page[size]": String(PAGE_SIZE) });
    const status = $("filter-status").value;
    if (status) query.set("filter[status]", status);
    const principal = $("filter-principal").value.trim();
    if (state.admin && principal) query.set("filter[principalName]", principal);
    return `/${collection}?${query}`;
  }

  async function loadJobs() {
    try {
      const [queries, exports] = await Promise.all([
        call("GET", listPath("asyncQuery")),
        call("GET", listPath("tableExport")),
      ]);
      state.jobs.clear();
      for (const job of [...queries.data, ...exports.data]) state.jobs.set(job.id, job);
      state.next = { asyncQuery: queries.links.next || null, tableExport: exports.links.next || null };
      renderJobs();
      problem("");
    } catch (e) {
      problem(`The jobs could not be loaded: ${e.message}`);
    }
  }

  async function refreshJob(type, id) {
    try {
      const document = await call("GET", `/${type}/${id}`);
      const before = state.jobs.get(id);
      state.jobs.set(id, document.data);
      renderJobs();
      const status = document.data.attributes.status;
      if (!before || before.attributes.status !== status) {
        announce(`Job ${shortId(id)} is ${status}`);
      }
    } catch (e) {
      if (e.status === 404) {
        state.jobs.delete(id);
        renderJobs();
      }
    }
  }

  // Loads the next page of each collection that has one.
  async function loadOlder() {
    const button = $("more");
    button.disabled = true;
    try {
      for (const [collection, link] of Object.entries(state.next)) {
        if (!link) continue;
        const page = await request("GET", link);
        for (const job of page.data) if (!state.jobs.has(job.id)) state.jobs.set(job.id, job);
        state.next[collection] = page.links.next || null;
      }
      renderJobs();
      problem("");
    } catch (e) {
      problem(`Older jobs could not be loaded: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // The two collections are listed page by page: below the oldest job
  // loaded of a collection with more pages, jobs of the other may be
  // missing, so the list stops there until more is loaded. What is shown
  // is then exactly the newest jobs, newest first.
  function boundary() {
    let edge = null;
    for (const [collection, link] of Object.entries(state.next)) {
      if (!link) continue;
      let oldest = null;
      for (const job of state.jobs.values()) {
        if (job.type === collection && (oldest === null || job.attributes.createdOn < oldest)) {
          oldest = job.attributes.createdOn;
        }
      }
      if (oldest !== null && (edge === null || oldest > edge)) edge = oldest;
    }
    return edge;
  }

  function matchesFilters(job) {
    const status = $("filter-status").value;
    if (status && job.attributes.status !== status) return false;
    const principal = $("filter-principal").value.trim();
    if (state.admin && principal && job.attributes.principalName !== principal) return false;
    return true;
  }

  function progressCell(attributes) {
    const progress = attributes.progress;
    if (attributes.status !== "PROCESSING" || !progress) return null;
    const label = progress.total
      ? `${progress.records} of ${progress.total}`
      : `${progress.records} so far`;
    const bar = el("progress", {
      max: progress.total || undefined,
      value: progress.total ? progress.records : undefined,
      "aria-label": `Progress: ${label}`,
    });
    return el("div", { class: "progress" }, bar, el("span", { class: "muted" }, label),
      progress.message ? el("span", { class: "muted" }, ` · ${progress.message}`) : null);
  }

  function records(count) {
    if (count === null || count === undefined) return "? records";
    return count === 1 ? "1 record" : `${count} records`;
  }

  function resultCell(job) {
    const a = job.attributes;
    const result = a.result;
    if (!result) return "";
    if (a.status === "COMPLETE" && job.type === "tableExport" && result.url) {
      const size = result.contentLength != null ? ` (${result.contentLength} bytes)` : "";
      return el("span", {},
        el("a", { href: result.url, download: "", class: "download" }, `Download ${a.resultType}`),
        ` ${records(result.recordCount)}${size}`);
    }
    if (a.status === "COMPLETE") {
      const body = result.responseBody ?? "";
      return el("details", {},
        el("summary", {}, records(result.recordCount)),
        el("pre", { class: "body" }, body.length > 2000 ? `${body.slice(0, 2000)}…` : body));
    }
    if (result.message) return el("span", { class: "message" }, result.message);
    return "";
  }

  function row(job) {
    const a = job.attributes;
    const kind = job.type === "tableExport" ? `Export ${a.resultType}` : "Query";
    const cancelButton = ACTIVE.has(a.status)
      ? el("button", {
        type: "button",
        class: "cancel",
        "aria-label": `Cancel job ${shortId(job.id)}`,
        onclick: () => cancel(job),
      }, "Cancel")
      : null;
    return el("tr", { "data-id": job.id, "data-status": a.status },
      el("td", {}, when(a.createdOn)),
      el("td", {}, kind),
      state.admin ? el("td", {}, a.principalName) : null,
      el("td", {}, el("code", { class: "query", title: a.query }, a.query)),
      el("td", {},
        el("span", { class: "status", "data-status": a.status }, a.status),
        a.attempt > 1 ? el("span", { class: "muted" }, ` (attempt ${a.attempt})`) : null,
        progressCell(a)),
      el("td", {}, when(a.updatedOn)),
      el("td", {}, resultCell(job)),
      el("td", {}, cancelButton));
  }

  function renderJobs() {
    const edge = boundary();
    const jobs = [...state.jobs.values()]
      .filter((job) => edge === null || job.attributes.createdOn >= edge)
      .filter(matchesFilters)
      .sort((x, y) => (x.attributes.createdOn < y.attributes.createdOn ? 1
        : x.attributes.createdOn > y.attributes.createdOn ? -1 : 0));
    const body = $("jobs").tBodies[0];
    // Keep keyboard focus on a row's button across re-renders.
    const focused = document.activeElement && document.activeElement.closest("tr[data-id]");
    const focusId = focused ? focused.dataset.id : null;
    body.replaceChildren(...jobs.map(row));
    if (focusId) {
      const again = body.querySelector(`tr[data-id="${focusId}"] button`);
      if (again) again.focus();
    }
    $("empty").hidden = jobs.length > 0;
    $("more").hidden = !state.next.asyncQuery && !state.next.tableExport;
  }

  async function cancel(job) {
    try {
      const document = await call("PATCH", `/${job.type}/${job.id}`, {
        data: { type: job.type, id: job.id, attributes: { status: "CANCELLED" } },
      });
      state.jobs.set(job.id, document.data);
      renderJobs();
      announce(`Job ${shortId(job.id)} is ${document.data.attributes.status}`);
      problem("");
    } catch (e) {
      problem(`Job ${shortId(job.id)} could not be cancelled: ${e.message}`);
    }
  }

  // ---- submitting -------------------------------------------------------

  function setUpForm() {
    const select = $("format");
    for (const name of formats) select.append(el("option", { value: name }, name));
    if (formats.includes("CSV")) select.value = "CSV";
    const afterInput = $("async-after");
    afterInput.max = String(maxAsyncAfter);
    for (const radio of document.querySelectorAll('input[name="kind"]')) {
      radio.addEventListener("change", () => {
        select.disabled = document.querySelector('input[name="kind"]:checked').value !== "tableExport";
      });
    }
    $("submit").addEventListener("submit", async (event) => {
      event.preventDefault();
      const type = document.querySelector('input[name="kind"]:checked').value;
      const attributes = {
        query: $("query").value,
        queryType: "SQL",
        asyncAfterSeconds: Number(afterInput.value) || 0,
      };
      if (type === "tableExport") attributes.resultType = select.value;
      const button = event.submitter || $("submit").querySelector("button");
      button.disabled = true;
      try {
        const document = await call("POST", `/${type}`, { data: { type, attributes } });
        state.jobs.set(document.data.id, document.data);
        renderJobs();
        announce(`Submitted job ${shortId(document.data.id)}: ${document.data.attributes.status}`);
        problem("");
      } catch (e) {
        problem(`The query was not submitted: ${e.message}`);
      } finally {
        button.disabled = false;
      }
    });
    $("more").addEventListener("click", loadOlder);
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      loadJobs();
    });
  }

  // ---- live changes -----------------------------------------------------

  function onChange(resource) {
    state.cursor = resource.id;
    const a = resource.attributes;
    const job = state.jobs.get(a.jobId);
    if (a.progress && a.status === "PROCESSING" && a.previousStatus === "PROCESSING" && job) {
      job.attributes.progress = a.progress;
      job.attributes.status = "PROCESSING";
      renderJobs();
    } else {
      refreshJob(a.jobType, a.jobId);
    }
    overviewSoon();
  }

  function connect() {
    if (typeof EventSource !== "function") return poll();
    const url = `${api}/asyncEvents/stream${state.cursor ? `?last_id=${encodeURIComponent(state.cursor)}` : ""}`;
    const source = new EventSource(url, { withCredentials: true });
    state.source = source;
    source.addEventListener("ready", (event) => {
      state.cursor = event.lastEventId || state.cursor;
      setMode("live", "Live");
      loadJobs();
    });
    source.addEventListener("asyncEvent", (event) => onChange(JSON.parse(event.data)));
    source.addEventListener("missed", (event) => {
      state.cursor = event.lastEventId || state.cursor;
      loadJobs();
    });
    const reconnectLater = () => {
      source.close();
      state.source = null;
      setMode("polling", "Polling");
      poll();
      setTimeout(() => {
        stopPolling();
        connect();
      }, 10 * POLL_MS);
    };
    source.addEventListener("closing", reconnectLater);
    source.addEventListener("failure", reconnectLater);
    source.addEventListener("error", () => {
      // CONNECTING: the browser retries by itself, resuming with
      // Last-Event-ID. CLOSED: refused (too many streams, signed out, a
      // proxy that does not stream): poll instead.
      if (source.readyState === EventSource.CLOSED) reconnectLater();
      else setMode("connecting", "Reconnecting…");
    });
  }

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function poll() {
    stopPolling();
    setMode("polling", "Polling");
    try {
      const query = new URLSearchParams({ limit: "100" });
      if (state.cursor) query.set("last_id", state.cursor);
      const page = await call("GET", `/asyncEvents?${query}`);
      if (state.cursor === null || page.meta.missed) {
        state.cursor = page.meta.newest;
        await loadJobs();
      } else {
        for (const resource of page.data) onChange(resource);
        state.cursor = page.meta.lastId;
      }
    } catch (e) {
      problem(`Changes could not be read: ${e.message}`);
    }
    state.pollTimer = setTimeout(poll, POLL_MS);
  }

  // ---- overview (admins) ------------------------------------------------

  function cells(tableId, rows) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren(...rows.map((values) => el("tr", {}, ...values.map((v) => el("td", {}, v)))));
    if (!rows.length) {
      const columns = $(tableId).tHead.rows[0].cells.length;
      body.append(el("tr", {}, el("td", { colspan: columns, class: "muted" }, "None")));
    }
  }

  function renderOverview(o) {
    $("overview").hidden = false;
    $("overview-at").replaceChildren(when(o.at));
    $("ov-queued").textContent = o.queued;
    $("ov-running").textContent = o.running;
    $("ov-expired").textContent = o.expiredLeaseCount;
    const oldest = o.oldestQueued;
    $("ov-oldest").textContent = oldest
      ? `${shortId(oldest.id)} (${oldest.principal}), waiting ${Math.round(oldest.waited / 1000)} s`
      : "none";
    cells("ov-instances", o.instances.map((i) => [el("code", {}, i.instance), i.running, i.expiredLeases]));
    cells("ov-principals", o.principals.map((p) => [p.principal, p.queued, p.running]));
    cells("ov-leases", o.expiredLeases.map((l) =>
      [el("code", {}, shortId(l.id)), l.principal, el("code", {}, l.instance), when(l.expiredAt)]));
    cells("ov-cleaner", o.cleaner.map((s) => [when(s.at), s.retried, s.timedOut, s.cancelCompleted,
      s.leasesExpired, s.resultsExpired, s.recordsDeleted, s.partialsRemoved]));
  }

  async function loadOverview() {
    clearTimeout(state.overviewTimer);
    try {
      const document = await call("GET", "/asyncOverview");
      renderOverview(document.data.attributes);
    } catch (e) {
      if (e.status !== 403) problem(`The overview could not be loaded: ${e.message}`);
    }
    state.overviewTimer = setTimeout(loadOverview, OVERVIEW_MS);
  }

  function overviewSoon() {
    if (!state.admin || state.overviewDue) return;
    state.overviewDue = setTimeout(() => {
      state.overviewDue = null;
      loadOverview();
    }, 500);
  }

  // ---- start ------------------------------------------------------------

  async function start() {
    setUpForm();
    // An admin is whoever may read the overview.
    try {
      const document = await call("GET", "/asyncOverview");
      state.admin = true;
      renderOverview(document.data.attributes);
      state.overviewTimer = setTimeout(loadOverview, OVERVIEW_MS);
    } catch (e) {
      if (e.status === 401) {
        $("who").textContent = "Not signed in.";
        problem(`Sign in first: ${e.message}`);
        setMode("off", "Offline");
        return;
      }
      if (e.status !== 403) problem(`The overview could not be loaded: ${e.message}`);
    }
    document.body.classList.toggle("admin", state.admin);
    for (const cell of document.querySelectorAll(".admin-only")) cell.hidden = !state.admin;
    $("filter-principal-label").hidden = !state.admin;
    $("who").textContent = state.admin ? "Admin view: everyone's jobs." : "Your jobs.";
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
