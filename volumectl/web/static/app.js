// The fleet page: plain JavaScript, no build step. Data comes from this server's /api and /api/events only.
// Every value from the fleet (names, labels, errors) goes into the page as text: h() makes text nodes, and no
// code here sets innerHTML or an event-handler attribute.
"use strict";
(function () {
  const $view = document.getElementById("view");
  const $feed = document.getElementById("feed");
  const $live = document.getElementById("live");
  const state = { summary: null, route: null, feed: new Map(), refresh: null, cells: new Map() };

  // --- DOM, text only -------------------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (/^on/i.test(k)) throw new Error("no event-handler attributes");
      if (k === "href" && !String(v).startsWith("#")) throw new Error("links stay on this page");
      e.setAttribute(k, v === true ? "" : String(v));
    }
    add(e, children);
    return e;
  }
  function add(e, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  const enc = encodeURIComponent;
  const hostLink = host => h("a", { href: `#/host/${enc(host)}` }, host);
  const volLink = (host, v) => h("a", { href: `#/volume/${enc(host)}/${enc(v)}` }, v);
  const badge = (status, text) => h("span", { class: `badge st-${status}`, "data-status": status }, text || status);

  // --- Formats --------------------------------------------------------------------------------------------------
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = n, u = -1;
    do { v /= 1024; u++; } while (v >= 1024 && u < units.length - 1);
    return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
  }
  function span(s) {
    if (s === null || s === undefined) return "–";
    s = Math.abs(s);
    for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= n) return `${Math.round(s / n)}${u}`;
    return `${Math.round(s)}s`;
  }
  const ts = iso => iso ? Date.parse(iso) / 1000 : null;
  const now = () => Date.now() / 1000;
  const ago = iso => iso ? `${span(now() - ts(iso))} ago` : "never";
  function until(iso) {
    if (!iso) return "–";
    const d = ts(iso) - now();
    return d >= 0 ? `in ${span(d)}` : `${span(-d)} ago`;
  }
  const secs = s => s === null || s === undefined ? "–" : (s < 10 ? `${s.toFixed(2)} s` : span(s));
  const num = n => (n || 0).toLocaleString("en");

  // --- Data -----------------------------------------------------------------------------------------------------
  async function get(path, params) {
    const q = params ? "?" + new URLSearchParams(params).toString() : "";
    const r = await fetch(path + q, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!r.ok && r.status !== 404) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  // --- Routing --------------------------------------------------------------------------------------------------
  function parse() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    switch (parts[0]) {
      case "hosts": return { name: "hosts" };
      case "host": return { name: "host", host: parts[1] };
      case "volume": return { name: "volume", host: parts[1], volume: parts.slice(2).join("/") };
      case "policies": return { name: "policies" };
      default: return { name: "overview" };
    }
  }
  async function show() {
    const route = parse();
    state.route = route;
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.classList.toggle("active", a.dataset.nav === route.name || (a.dataset.nav === "hosts" && route.name === "host"));
    }
    const views = { overview, hosts, host, volume, policies };
    try {
      await views[route.name](route);
    } catch (err) {
      clear($view).appendChild(h("div", { class: "banner error" }, `Could not load this view: ${err.message}`));
    }
  }
  window.addEventListener("hashchange", () => { state.hostsPage = null; show(); });

  // --- Overview -------------------------------------------------------------------------------------------------
  function tile(n, label, cls, id) {
    return h("div", { class: `tile ${cls || ""}`, "data-tile": id }, h("div", { class: "n" }, n), h("div", { class: "l" }, label));
  }
  function tiles(s) {
    const c = s.counts || {}, r = s.at_risk, d = s.drills || { passed: 0, failed: 0, never: 0 };
    return h("div", { class: "tiles", id: "tiles" },
      tile(num(s.hosts.total), `hosts: ${num(s.hosts.up)} up`, "", "hosts"),
      tile(num(s.hosts.stale), "hosts stale", s.hosts.stale ? "warn" : "", "stale"),
      tile(num(s.hosts.insecure), "hosts insecure", s.hosts.insecure ? "warn" : "", "insecure"),
      tile(num(s.volumes), "volumes", "", "volumes"),
      tile(num(s.protected), `protected (${num(c.running)} running)`, "", "protected"),
      tile(num(r.uncovered), "uncovered", r.uncovered ? "note" : "", "uncovered"),
      tile(num(r.failing), "failing", r.failing ? "bad" : "", "failing"),
      tile(num(r.suspect), "suspect (retention held)", r.suspect ? "bad" : "", "suspect"),
      tile(num(r.overdue), "overdue", r.overdue ? "warn" : "", "overdue"),
      tile(num(d.failed), `last drill failed (${num(d.passed)} passed, ${num(d.never)} never drilled)`, d.failed ? "bad" : "", "drills-failed"),
      tile(bytes(s.size), "in volumes", "", "size"),
      tile(bytes(s.shared_store.bytes), `stored in the shared store (${num(s.shared_store.backups)} backups)`, "", "stored"));
  }
  function attention(s) {
    const box = h("div", { id: "attention" });
    if (!s.attention.length) {
      box.appendChild(h("p", { class: "muted" }, "No volume is failing, suspect or overdue."));
      return box;
    }
    const rows = s.attention.slice(0, state.allAttention ? undefined : 15).map(a => h("tr", { "data-status": a.status, "data-host": a.host, "data-volume": a.volume },
      h("td", {}, badge(a.status)), h("td", {}, hostLink(a.host)), h("td", {}, volLink(a.host, a.volume)),
      h("td", { class: "why" }, a.why)));
    box.appendChild(h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "status"), h("th", {}, "host"), h("th", {}, "volume"),
      h("th", {}, "why"))), h("tbody", {}, rows)));
    const hidden = s.attention_total - rows.length;
    if (hidden > 0) {
      const more = h("button", {}, `${num(hidden)} more`);
      if (rows.length < s.attention.length) more.addEventListener("click", () => { state.allAttention = true; box.replaceWith(attention(s)); });
      else more.addEventListener("click", () => { location.hash = "#/hosts"; });
      box.appendChild(h("p", {}, more, h("span", { class: "muted" }, rows.length < s.attention.length ? "" : " on the hosts page (filter by status)")));
    }
    return box;
  }
  function drillFailures(s) {
    const box = h("div", { id: "drill-failures" });
    const items = s.drill_failures || [];
    if (!items.length) {
      box.appendChild(h("p", { class: "muted" }, "No volume's last restore drill failed."));
      return box;
    }
    const rows = items.map(f => h("tr", { "data-host": f.host, "data-volume": f.volume },
      h("td", {}, ago(f.at)), h("td", {}, hostLink(f.host)), h("td", {}, volLink(f.host, f.volume)),
      h("td", { class: "mono" }, f.backup_id), h("td", { class: "why" }, f.why)));
    box.appendChild(h("table", {}, h("thead", {}, h("tr", {}, ["drilled", "host", "volume", "backup", "why"].map(t => h("th", {}, t)))),
      h("tbody", {}, rows)));
    const hidden = ((s.drills || {}).failed || 0) - rows.length;
    if (hidden > 0) box.appendChild(h("p", { class: "muted" }, `${num(hidden)} more: the hosts page lists the hosts (status "drill failed")`));
    return box;
  }
  function drillText(d) {  // a volume's last drill in a table cell
    if (!d) return h("span", { class: "muted" }, "never");
    return d.ok ? `passed ${d.age_s === null ? "" : span(d.age_s) + " ago"}` : badge("failing", `failed ${d.age_s === null ? "" : span(d.age_s) + " ago"}`);
  }
  function cell(g) {
    const [host, status, stale, insecure] = g;
    const cls = ["cell", `st-${status}`, stale ? "stale" : "", insecure ? "insecure" : ""].filter(Boolean).join(" ");
    return h("a", { class: cls, href: `#/host/${enc(host)}`, title: `${host}: ${status}${stale ? ", stale" : ""}${insecure ? ", insecure" : ""}`,
      "data-host": host, "data-status": status, "data-stale": stale ? "true" : "false" });
  }
  function legend() {
    const items = ["ok", "pending", "running", "uncovered", "overdue", "suspect", "failing", "unknown", "empty"].map(st =>
      h("span", {}, h("span", { class: `cell st-${st}` }), st));
    items.push(h("span", {}, h("span", { class: "cell st-ok stale" }), "stale"));
    items.push(h("span", {}, h("span", { class: "cell st-ok insecure" }), "insecure"));
    return h("div", { class: "legend" }, items);
  }
  async function overview() {
    const s = await get("/api/summary");
    state.summary = s;
    feedAll(s.feed);
    const grid = h("div", { class: "grid", id: "fleet-map" });
    state.cells = new Map();
    for (const g of s.grid) { const c = cell(g); state.cells.set(g[0], c); grid.appendChild(c); }
    const unreadable = s.unreadable.map(u => h("div", { class: "banner error" }, u));
    clear($view).appendChild(h("div", {},
      h("h1", {}, "Fleet health"), unreadable, tiles(s),
      h("h2", {}, `Fleet map: ${num(s.grid.length)} hosts, coloured by their worst volume`),
      h("div", { class: "card" }, grid, legend()),
      h("h2", {}, "Failing, suspect and overdue"), attention(s),
      h("h2", {}, "Restore drills that failed"), drillFailures(s)));
    if (!document.body.dataset.readyMs) document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "overview";
  }
  function onFleet(data) {
    const s = data.summary;
    state.summary = Object.assign({}, state.summary || {}, s);
    const r = state.route || {};
    if (r.name === "overview" && document.getElementById("tiles")) {
      document.getElementById("tiles").replaceWith(tiles(s));
      document.getElementById("attention").replaceWith(attention(s));
      document.getElementById("drill-failures").replaceWith(drillFailures(s));
      const grid = document.getElementById("fleet-map");
      for (const g of data.cells) {
        const c = cell(g), old = state.cells.get(g[0]);
        if (old) old.replaceWith(c); else grid.appendChild(c);
        state.cells.set(g[0], c);
      }
      for (const host of data.gone) { const old = state.cells.get(host); if (old) old.remove(); state.cells.delete(host); }
    } else if (r.name === "hosts" && (data.changed.length || data.cells.length)) {
      later(() => hosts(r, true));
    } else if ((r.name === "host" || r.name === "volume") && (data.changed.includes(r.host) || data.cells.some(g => g[0] === r.host))) {
      later(() => (r.name === "host" ? host(r, true) : volume(r, true)));
    }
  }
  function later(fn) {  // at most one refresh a second per view
    if (state.refresh) return;
    state.refresh = setTimeout(() => { state.refresh = null; fn(); }, 300);
  }

  // --- Hosts ----------------------------------------------------------------------------------------------------
  async function hosts(route, quiet) {
    const p = state.hostsPage || (state.hostsPage = { offset: 0, q: "", status: "" });
    const data = await get("/api/hosts", { offset: p.offset, limit: 50, q: p.q, status: p.status });
    const rows = data.hosts.map(x => {
      const c = x.counts;
      return h("tr", { "data-host": x.host, "data-status": x.status, "data-stale": x.stale ? "true" : "false" },
        h("td", {}, hostLink(x.host)),
        h("td", {}, badge(x.status), " ", x.stale ? badge("stale", "stale") : null, x.insecure.length ? h("span", { class: "badge st-overdue", title: x.insecure.join("\n") }, "insecure") : null),
        h("td", { class: "num" }, num(x.volumes)), h("td", { class: "num" }, num(c.failing)), h("td", { class: "num" }, num(c.overdue)),
        h("td", { class: "num" }, num(c.uncovered)), h("td", { class: "num" }, bytes(x.size)),
        h("td", {}, x.newest_backup ? `${span(now() - x.newest_backup)} ago` : "never"),
        h("td", { "data-drills-failed": String((x.drills || {}).failed || 0) }, (x.drills || {}).failed ? badge("failing", `${num(x.drills.failed)} failed`) : (x.newest_drill ? `${span(now() - x.newest_drill)} ago` : h("span", { class: "muted" }, "never"))),
        h("td", {}, `${span(x.age_s)} ago`), h("td", { class: "mono" }, x.agent_version));
    });
    if (quiet && state.route.name !== "hosts") return;
    const search = h("input", { type: "search", placeholder: "host name…", value: p.q, "aria-label": "filter hosts" });
    search.addEventListener("change", () => { p.q = search.value; p.offset = 0; hosts(route); });
    const pick = h("select", { "aria-label": "status" }, ["", "failing", "suspect", "overdue", "uncovered", "unknown", "running", "pending", "ok", "empty", "stale", "insecure", "drill-failed"]
      .map(v => h("option", { value: v, selected: v === p.status }, v ? v.replace("-", " ") : "any status")));
    pick.addEventListener("change", () => { p.status = pick.value; p.offset = 0; hosts(route); });
    clear($view).appendChild(h("div", {},
      h("h1", {}, "Hosts"), h("div", { class: "toolbar" }, search, pick, h("span", { class: "muted" }, `${num(data.total)} hosts, worst first`)),
      h("table", { id: "hosts" }, h("thead", {}, h("tr", {}, ["host", "status", "volumes", "failing", "overdue", "uncovered", "size", "last backup", "last drill", "snapshot", "agent"]
        .map((t, i) => h("th", { class: i >= 2 && i <= 6 ? "num" : null }, t)))), h("tbody", {}, rows)),
      pager(data.total, p, 50, () => hosts(route))));
    document.body.dataset.ready = "hosts";
  }
  function pager(total, p, size, go) {
    const prev = h("button", { disabled: p.offset === 0 }, "← previous");
    const next = h("button", { disabled: p.offset + size >= total }, "next →");
    prev.addEventListener("click", () => { p.offset = Math.max(0, p.offset - size); go(); });
    next.addEventListener("click", () => { p.offset += size; go(); });
    return h("div", { class: "pager" }, prev, h("span", { class: "muted" },
      total ? `${num(p.offset + 1)}–${num(Math.min(total, p.offset + size))} of ${num(total)}` : "none"), next);
  }

  // --- A host ---------------------------------------------------------------------------------------------------
  function charts(backups, title) {
    const pts = backups.map(b => ({ t: ts(b.created_at), y: b.stored_size }));
    const dur = backups.map(b => ({ t: ts(b.created_at), y: b.duration_s }));
    return h("div", { class: "charts" },
      Charts.line(pts, { title: `${title}: stored bytes per backup`, format: bytes }),
      Charts.line(dur, { title: `${title}: backup duration`, format: secs }));
  }
  async function host(route, quiet) {
    const p = state.hostPage && state.hostPage.host === route.host ? state.hostPage : (state.hostPage = { host: route.host, offset: 0, q: "" });
    const x = await get("/api/host", { host: route.host, offset: p.offset, limit: 100, q: p.q });
    if (state.route !== route) return;
    if (x.error) { clear($view).appendChild(h("div", { class: "banner error" }, `${route.host}: ${x.error}`)); return; }
    const banners = [];
    if (x.stale) banners.push(h("div", { class: "banner stale", id: "stale-banner" }, `Stale: no snapshot from this host for ${span(x.age_s)} (it sends one at least every ${span(x.heartbeat_s)}). Its agent or the host is down, or cut off from NATS; what follows is its last snapshot.`));
    if (x.insecure.length) banners.push(h("div", { class: "banner insecure" }, h("strong", {}, "Runs insecurely: "), h("ul", {}, x.insecure.map(i => h("li", {}, i)))));
    for (const r of x.rejected_policies) banners.push(h("div", { class: "banner error" }, `Ignores policy ${r.name}: ${r.reason}`));
    const runs = new Map();
    const rows = () => x.volume_rows.map(v => {
      const run = runs.get(v.name);
      return h("tr", { "data-volume": v.name, "data-status": v.status },
        h("td", {}, volLink(route.host, v.name)),
        h("td", {}, badge(v.status), v.why ? h("div", { class: "why" }, v.why) : null),
        h("td", { class: "num" }, bytes(v.size)),
        h("td", {}, v.users.map(u => h("div", {}, `${u.container} (${u.state})`))),
        h("td", {}, v.policies.join(", ") || "–"),
        h("td", {}, v.last_backup ? `${span(v.last_backup.age_s)} ago` : "never"),
        h("td", { "data-next": v.name }, run ? until(run.next_run) : "…"),
        h("td", { "data-drill": v.last_verify ? (v.last_verify.ok ? "passed" : "failed") : "never" }, drillText(v.last_verify),
          v.last_verify && !v.last_verify.ok && v.last_verify.error ? h("div", { class: "why" }, v.last_verify.error) : null));
    });
    const body = h("tbody", {}, rows());
    const search = h("input", { type: "search", placeholder: "volume name…", value: p.q, "aria-label": "filter volumes" });
    search.addEventListener("change", () => { p.q = search.value; p.offset = 0; host(route); });
    const chartBox = h("div", { id: "host-charts" }, h("p", { class: "muted" }, "Asking the agent for its backups…"));
    clear($view).appendChild(h("div", { "data-host": x.host, "data-status": x.status, "data-stale": x.stale ? "true" : "false", id: "host-view" },
      h("h1", {}, x.host, " ", badge(x.status), " ", x.stale ? badge("stale", "stale") : null),
      banners,
      h("dl", { class: "kv card" },
        h("dt", {}, "volumes"), h("dd", {}, `${num(x.volumes)} (${bytes(x.size)})`),
        h("dt", {}, "shared store"), h("dd", {}, `${num(x.stored[0])} backups, ${bytes(x.stored[1])}`),
        h("dt", {}, "snapshot"), h("dd", {}, `${ago(x.taken_at)} (sizes ${x.sizes_at ? ago(x.sizes_at) : "not measured"})`),
        h("dt", {}, "agent"), h("dd", {}, `${x.agent_version}, Docker ${x.engine}, drivers ${x.plugins.join(", ")}`)),
      chartBox,
      h("h2", {}, "Volumes"),
      h("div", { class: "toolbar" }, search, h("span", { class: "muted" }, `${num(x.total)} volumes, worst first`)),
      h("table", { id: "volumes" }, h("thead", {}, h("tr", {}, ["volume", "protection", "size", "used by", "policies", "last backup", "next run", "last drill"]
        .map((t, i) => h("th", { class: i === 2 ? "num" : null }, t)))), body),
      pager(x.total, p, 100, () => host(route))));
    document.body.dataset.ready = "host";
    if (quiet) return;
    get("/api/host/runs", { host: route.host }).then(r => {
      if (r.error || state.route !== route) return;
      for (const v of r.volumes) if (!runs.has(v.volume) || v.next_run) runs.set(v.volume, v);
      for (const td of body.querySelectorAll("td[data-next]")) {
        const run = runs.get(td.dataset.next);
        td.textContent = run ? until(run.next_run) : "–";
      }
    }).catch(() => {});
    get("/api/host/backups", { host: route.host }).then(r => {
      if (state.route !== route) return;
      clear(chartBox).appendChild(r.error ? h("p", { class: "muted" }, `No backups to draw: ${r.error}`) : charts(r.backups, x.host));
    }).catch(() => {});
  }

  // --- A volume -------------------------------------------------------------------------------------------------
  async function volume(route, quiet) {
    const v = await get("/api/volume", { host: route.host, name: route.volume });
    if (state.route !== route) return;
    const head = h("h1", {}, hostLink(route.host), " / ", route.volume, " ", v.status ? badge(v.status) : null);
    const parts = [head];
    if (v.error) parts.push(h("div", { class: "banner error" }, v.error));
    else {
      parts.push(h("dl", { class: "kv card", id: "volume-facts" },
        h("dt", {}, "protection"), h("dd", {}, v.status, v.why ? ` — ${v.why}` : ""),
        h("dt", {}, "policies"), h("dd", {}, v.policies.join(", ") || "none"),
        h("dt", {}, "size"), h("dd", {}, bytes(v.size)),
        h("dt", {}, "driver"), h("dd", {}, v.driver),
        h("dt", {}, "used by"), h("dd", {}, v.users.map(u => `${u.container} (${u.state})`).join(", ") || "nobody"),
        h("dt", {}, "labels"), h("dd", { id: "labels" }, Object.entries(v.labels).map(([k, val]) => h("div", { class: "mono" }, `${k}=${val}`))),
        h("dt", {}, "created"), h("dd", {}, v.created_at || "–"),
        h("dt", {}, "last backup"), h("dd", {}, v.last_backup ? `${ago(v.last_backup.created_at)} (${v.last_backup.store}, ${bytes(v.last_backup.size)}, ${v.last_backup.trigger})` : "never")));
    }
    const nextDrill = h("dd", { id: "next-drill" }, "…");
    if (!v.error) {
      const d = v.last_verify;
      parts.push(h("h2", {}, "Restore drills"), h("dl", { class: "kv card", id: "drills", "data-drill": d ? (d.ok ? "passed" : "failed") : "never" },
        h("dt", {}, "last drill"), h("dd", {}, d ? [d.ok ? badge("ok", "passed") : badge("failing", "failed"), ` ${ago(d.verified_at)}`,
          d.policy ? ` (policy ${d.policy})` : " (asked for: verify)"] : "never (no drill of its backups on this host)"),
        d && d.error ? [h("dt", {}, "why"), h("dd", { class: "why", id: "drill-error" }, d.error)] : null,
        d ? [h("dt", {}, "backup"), h("dd", { class: "mono", id: "drill-backup" }, d.backup_id)] : null,
        h("dt", {}, "next drill"), nextDrill));
    }
    const chartBox = h("div", { id: "volume-charts" });
    const backupBox = h("div", { id: "backups" }, h("p", { class: "muted" }, "Asking the agent for the backups…"));
    const cmds = (v.commands || []).map(c => h("tr", { "data-op": c.op, "data-ok": c.ok ? "true" : "false" },
      h("td", {}, ago(c.at)), h("td", {}, c.op), h("td", {}, c.caller || "unknown"),
      h("td", {}, c.ok ? badge("ok", "ok") : badge("failing", c.code || "error"), c.message ? h("div", { class: "why" }, c.message) : null),
      h("td", { class: "mono" }, c.id)));
    parts.push(h("h2", {}, "Backups, newest first"), chartBox, backupBox,
      h("h2", {}, "Commands that touched it"),
      cmds.length ? h("table", { id: "commands" }, h("thead", {}, h("tr", {}, ["when", "op", "caller", "outcome", "id"].map(t => h("th", {}, t)))), h("tbody", {}, cmds))
        : h("p", { class: "muted" }, "None in the audit stream's recent history."));
    clear($view).appendChild(h("div", { id: "volume-view", "data-status": v.status || "" }, parts));
    document.body.dataset.ready = "volume";
    if (!v.error) get("/api/host/runs", { host: route.host, volume: route.volume }).then(x => {
      if (state.route !== route) return;
      const next = (x.volumes || []).filter(c => c.volume === route.volume && c.next_verify).map(c => c.next_verify).sort()[0];
      nextDrill.textContent = x.error ? `unknown: ${x.error}` : (next ? `${until(next)} (${next.replace("T", " ").slice(0, 19)})` : "none scheduled (no policy covering it has a verify schedule)");
    }).catch(() => { nextDrill.textContent = "unknown"; });
    const r = await get("/api/volume/backups", { host: route.host, name: route.volume });
    if (state.route !== route) return;
    if (r.error) { clear(backupBox).appendChild(h("p", { class: "muted" }, r.error)); return; }
    chartBox.appendChild(charts(r.backups, route.volume));
    const rows = r.backups.map(b => h("tr", { "data-backup": b.backup_id },
      h("td", {}, h("div", {}, b.created_at.replace("T", " ").slice(0, 19)), h("div", { class: "mono muted" }, b.backup_id)),
      h("td", {}, b.store, b.host !== route.host ? ` (from ${b.host})` : ""),
      h("td", { class: "num" }, bytes(b.size)), h("td", { class: "num" }, bytes(b.stored_size)),
      h("td", { class: "num" }, secs(b.duration_s)), h("td", {}, b.trigger, b.policy ? ` (${b.policy})` : ""),
      h("td", {}, b.encrypted ? "yes" : "no"),
      h("td", {}, b.keep === null ? (b.policy ? "–" : "until forgotten") : (b.keep.length ? b.keep.join(", ") : "forgotten at the next run")),
      h("td", { class: "num" }, b.files === null || b.files === undefined ? "–" : num(b.files)),
      h("td", { title: b.content_digest || "" }, b.content_digest ? "recorded" : h("span", { class: "muted" }, "none (made before 2.3: a drill checks the rest)")),
      h("td", { "data-verified": b.drill ? (b.drill.ok ? "passed" : "failed") : "never" },
        b.drill ? [b.drill.ok ? badge("ok", "verified") : badge("failing", "drill failed"), h("div", { class: "why" }, ago(b.drill.at)),
          b.drill.error ? h("div", { class: "why" }, b.drill.error) : null] : h("span", { class: "muted" }, "not drilled"))));
    clear(backupBox).appendChild(rows.length ? h("table", {}, h("thead", {}, h("tr", {},
      ["made", "store", "size", "stored", "took", "trigger", "encrypted", "kept by", "entries", "content digest", "restore drill"].map((t, i) => h("th", { class: (i >= 2 && i <= 4) || i === 8 ? "num" : null }, t)))),
      h("tbody", {}, rows)) : h("p", { class: "muted" }, "No backups."));
  }

  // --- Policies -------------------------------------------------------------------------------------------------
  function keepText(k) {
    return Object.entries(k || {}).filter(([, n]) => n).map(([r, n]) => `${r} ${n}`).join(", ") || "–";
  }
  function selectorText(s) {
    const parts = [];
    if (s.hosts) parts.push(`hosts ${s.hosts.join(" ")}`);
    if (s.volumes) parts.push(`volumes ${s.volumes.join(" ")}`);
    if (s.labels) parts.push(`labels ${s.labels.join(" ")}`);
    return parts.join("; ") || "every volume of every host";
  }
  function hostList(items, why) {
    if (!items.length) return h("span", { class: "muted" }, "none");
    const shown = items.slice(0, 20).map(i => h("li", {}, hostLink(i.host), why ? `: ${i.why}` : (i.volumes ? ` (${i.volumes})` : ""),
      i.signed_by ? ` signed by ${i.signed_by}` : ""));
    if (items.length > 20) shown.push(h("li", { class: "muted" }, `and ${items.length - 20} more`));
    return h("ul", { class: "list-inline" }, shown);
  }
  async function policies(route, ask) {
    const data = await get("/api/policies", ask ? { ask: 1 } : {});
    if (state.route !== route) return;
    const rows = data.policies.map(p => {
      const pol = p.policy;
      const applying = p.agents ? p.agents.applying : p.inventory.applying;
      const ignoring = p.agents ? p.agents.ignoring : p.inventory.ignoring;
      return h("tr", { "data-policy": p.name },
        h("td", {}, h("strong", {}, p.name), p.removed ? h("div", { class: "why" }, "removed") : null, !p.in_bucket ? h("div", { class: "why" }, "not in the bucket (container labels)") : null),
        h("td", {}, pol ? [h("code", {}, pol.schedule), ` ${pol.timezone || "UTC"}`] : "–"),
        h("td", {}, pol ? selectorText(pol.selector || {}) : "–"),
        h("td", {}, pol ? keepText(pol.keep) : "–"),
        h("td", {}, pol ? `${pol.store || "local"}${pol.encrypt_to && pol.encrypt_to.length ? ", encrypted" : ""}` : "–"),
        h("td", {}, p.signer ? h("span", { class: "mono", title: p.signer }, `${p.signer.slice(0, 10)}…`) : "–", p.signed_at ? h("div", { class: "why" }, ago(p.signed_at)) : null),
        h("td", {}, hostList(applying, false)),
        h("td", {}, hostList(ignoring, true)));
    });
    const note = data.asked ? `As ${num(data.asked.length)} agents answered just now (policies).` : "From the inventory; asking every agent…";
    clear($view).appendChild(h("div", {}, h("h1", {}, "Policies"), h("p", { class: "muted", id: "policies-note" }, note),
      h("table", { id: "policies" }, h("thead", {}, h("tr", {}, ["policy", "schedule", "selects", "keeps", "store", "signed by", "applied by", "ignored by"].map(t => h("th", {}, t)))),
        h("tbody", {}, rows))));
    document.body.dataset.ready = "policies";
    if (!ask) policies(route, true).catch(() => {});
  }

  // --- The feed -------------------------------------------------------------------------------------------------
  function feedText(i) {
    switch (i.kind) {
      case "backup": case "restore": {
        const verb = { running: "running", completed: "completed", failed: "failed" }[i.state] || i.state;
        return `${i.kind} of ${i.volume} on ${i.host} ${verb}`;
      }
      case "drill": {
        const what = `restore drill of ${i.volume || "a volume"}${i.backup_id ? " (" + i.backup_id + ")" : ""} on ${i.host}`;
        const who = i.policy ? ` (policy ${i.policy})` : (i.caller ? ` by ${i.caller}` : "");
        return i.state === "passed" ? `${what}${who} passed` : `${what}${who} failed: ${i.code || "error"}`;
      }
      case "volume.created": return `volume ${i.volume} created on ${i.host}`;
      case "volume.removed": return `volume ${i.volume} removed on ${i.host}`;
      default: {
        const what = `${i.op}${i.volume ? " " + i.volume : ""} on ${i.host}`;
        const who = i.caller ? ` by ${i.caller}` : "";
        if (i.state === "ok") return `${what}${who}: done`;
        return `${what}${who} ${i.state}: ${i.code}`;
      }
    }
  }
  function feedItem(i) {
    const li = h("li", { class: i.state, "data-key": i.key, "data-kind": i.kind, "data-state": i.state, "data-volume": i.volume || "" },
      h("div", { class: "t" }, ago(i.at)),
      h("div", { class: "what" }, i.volume ? h("a", { href: `#/volume/${enc(i.host)}/${enc(i.volume)}` }, feedText(i)) : feedText(i)));
    if (i.kind === "backup" || i.kind === "restore") {
      const bar = h("progress", {});
      if (i.state === "completed") { bar.max = 1; bar.value = 1; }
      else if (i.state === "failed") { bar.max = 1; bar.value = 0; }
      else if (i.expected) { bar.max = i.expected; bar.value = Math.min(i.bytes_done || 0, i.expected); }
      li.appendChild(bar);
      li.appendChild(h("div", { class: "why" }, `${bytes(i.bytes_done || 0)}${i.expected && i.state === "running" ? " of about " + bytes(i.expected) : ""}`));
    }
    if (i.error) li.appendChild(h("div", { class: "why" }, i.error));
    if (i.message && i.state !== "ok") li.appendChild(h("div", { class: "why" }, i.message));
    return li;
  }
  function feedPut(i) {
    const old = state.feed.get(i.key);
    const li = feedItem(i);
    if (old) old.remove();
    state.feed.set(i.key, li);
    $feed.insertBefore(li, $feed.firstChild);
    while ($feed.children.length > 200) {
      const last = $feed.lastChild;
      state.feed.delete(last.dataset.key);
      last.remove();
    }
  }
  function feedAll(items) {
    clear($feed);
    state.feed = new Map();
    for (const i of items) feedPut(i);
  }

  // --- Live -----------------------------------------------------------------------------------------------------
  function connect() {
    const es = new EventSource("/api/events");
    let opened = false;
    es.addEventListener("hello", () => {
      $live.textContent = "live";
      $live.className = "live on";
      if (opened) show();  // back after a break: read everything again
      opened = true;
    });
    es.addEventListener("feed", e => { feedPut(JSON.parse(e.data)); document.body.dataset.lastEvent = String(Date.now()); });
    es.addEventListener("fleet", e => onFleet(JSON.parse(e.data)));
    es.addEventListener("error", () => { $live.textContent = "reconnecting…"; $live.className = "live off"; });
  }

  show();
  if (parse().name !== "overview") get("/api/summary").then(s => feedAll(s.feed)).catch(() => {});  // the overview reads it
  connect();
})();
