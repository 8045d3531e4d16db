"use strict";
// dynexport web UI: setup wizard, login, live dashboard. No framework, no build step.
(() => {
  const $ = (s, el = document) => el.querySelector(s);
  const $$ = (s, el = document) => Array.from(el.querySelectorAll(s));
  const S = { session: null, csrf: null, devices: {}, serca: false, chainOk: false, config: null,
    step: 0, range: 600, events: null, chartTimer: null };

  // -- helpers ---------------------------------------------------------------------------
  function msg(text, bad) {
    const m = $("#msg");
    m.textContent = text || "";
    m.hidden = !text;
    m.className = bad ? "bad" : "";
  }
  async function api(method, path, body, raw) {
    const headers = {};
    if (method !== "GET" && S.csrf) headers["X-CSRF-Token"] = S.csrf;
    let data;
    if (raw !== undefined) { data = raw; headers["Content-Type"] = "application/x-pem-file"; }
    else if (body !== undefined) { data = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
    const r = await fetch(path, { method, headers, body: data, credentials: "same-origin" });
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (doc && doc.csrf) S.csrf = doc.csrf;
    if (!r.ok) {
      const err = new Error((doc && doc.error) || r.status + " " + r.statusText);
      err.status = r.status; err.doc = doc;
      throw err;
    }
    return doc;
  }
  const W = (v) => (v === null || v === undefined) ? "–" :
    (Math.abs(v) >= 10000 ? (v / 1000).toFixed(1) + " kW" : Math.round(v) + " W");
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    kids.forEach((k) => e.append(k));
    return e;
  };
  function facts(dl, pairs) {
    dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v === null || v === undefined ? "–" : String(v) })]));
  }
  function show(id) {
    ["login", "setup", "dash"].forEach((s) => { $("#" + s).hidden = s !== id; });
    $("#nav").hidden = S.session.setupMode;
    $("#logout").hidden = !S.session.loggedIn;
    window.scrollTo(0, 0);
    if (id === "dash") startLive(); else stopLive();
  }

  // -- routing ---------------------------------------------------------------------------
  async function route(want) {
    S.session = await api("GET", "/api/session");
    if (S.session.csrf) S.csrf = S.session.csrf;
    const s = S.session;
    if (s.setupMode || want === "setup") {
      if (!s.passwordSet) return startSetup();
      if (!s.loggedIn) { S.after = "setup"; return show("login"); }
      return startSetup();
    }
    show("dash");
  }

  // -- login -----------------------------------------------------------------------------
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/api/login", { password: $("#login-pw").value });
      $("#login-pw").value = ""; msg("");
      await route(S.after);
    } catch (e) { msg(e.message, true); }
  });
  $("#logout").addEventListener("click", async () => {
    await api("POST", "/api/logout", {}).catch(() => null);
    S.csrf = null; await route();
  });
  $$("[data-go]").forEach((a) => a.addEventListener("click", (ev) => {
    ev.preventDefault(); history.pushState(null, "", a.getAttribute("href")); route(a.dataset.go);
  }));

  // -- setup wizard ----------------------------------------------------------------------
  const STEPS = $$(".step").map((s) => s.dataset.step);
  function stepsShown() {
    return STEPS.filter((s) => !(s === "certificate" && !$("#use-utility").checked) &&
      !(s === "password" && S.session.passwordSet));
  }
  async function startSetup() {
    show("setup");
    try { S.config = await api("GET", "/api/config"); } catch (e) { S.config = {}; }
    try {
      const wifi = await api("GET", "/api/wifi");
      if (wifi.configured) { $("#net-wifi").checked = true; $("#ssid").value = wifi.ssid || ""; }
    } catch (e) { /* not logged in yet */ }
    fillFromConfig(S.config || {});
    S.step = 0;
    renderStep();
  }
  function fillFromConfig(c) {
    const u = c.utility;
    $("#use-utility").checked = !!u || !!S.session.setupMode;
    if (u) { $("#u-server").value = u.server; $("#u-nmi").value = u.nmi; $("#u-pin").value = u.pin ?? ""; }
    const lim = c.limits || {};
    $("#limit-export").value = lim.exportW ?? "";
    $("#limit-gen").value = lim.generationW ?? "";
    (c.inverters || []).forEach((d) => addDevice(d, "inverter", null));
    if (c.meter) addDevice(c.meter, "meter", null);
  }
  function renderStep() {
    const steps = stepsShown();
    const name = steps[S.step];
    $$(".step").forEach((s) => s.classList.toggle("on", s.dataset.step === name));
    $("#steps").replaceChildren(...steps.map((_, i) => el("li", { class: i <= S.step ? "done" : "" })));
    $("#step-count").textContent = (S.step + 1) + " / " + steps.length;
    $("#back").disabled = S.step === 0;
    $("#next").textContent = name === "review" ? "Apply" : "Next";
    if (name === "review") $("#review").textContent = JSON.stringify(buildConfig(), null, 2);
    $("#problems").replaceChildren();
  }
  $("#back").addEventListener("click", () => { S.step = Math.max(0, S.step - 1); msg(""); renderStep(); });
  $("#next").addEventListener("click", async () => {
    const name = stepsShown()[S.step];
    const btn = $("#next");
    btn.disabled = true;
    try {
      if (await LEAVE[name]()) {
        if (name === "review") return;
        S.step += 1; msg(""); renderStep();
      }
    } catch (e) { msg(e.message, true); }
    finally { btn.disabled = false; }
  });
  $$("input[name=net]").forEach((r) => r.addEventListener("change", () => { $("#wifi-fields").hidden = !$("#net-wifi").checked; }));
  $("#use-utility").addEventListener("change", () => { $("#utility-fields").hidden = !$("#use-utility").checked; });
  function readFileInto(input, area) {
    input.addEventListener("change", async () => { if (input.files[0]) area.value = await input.files[0].text(); });
  }
  readFileInto($("#u-serca-file"), $("#u-serca"));
  readFileInto($("#chain-file"), $("#chain"));

  const LEAVE = {
    async password() {
      const a = $("#pw1").value, b = $("#pw2").value;
      if (a.length < 8) throw new Error("The password needs at least 8 characters.");
      if (a !== b) throw new Error("The two passwords differ.");
      await api("POST", "/api/setup/password", { password: a });
      S.session = await api("GET", "/api/session");
      S.step -= 1; // the password step disappears from the list once it is set
      try { S.config = await api("GET", "/api/config"); } catch (e) { /* keep */ }
      return true;
    },
    async network() {
      if ($("#net-wifi").checked) await api("PUT", "/api/wifi", { ssid: $("#ssid").value, psk: $("#psk").value });
      else await api("DELETE", "/api/wifi");
      return true;
    },
    async utility() {
      if (!$("#use-utility").checked) return true;
      if (!/^https:\/\/[^/\s]+$/.test($("#u-server").value.trim().replace(/\/$/, ""))) throw new Error("The server URL must be https://HOST[:PORT].");
      if (!/^[A-Za-z0-9]{10,11}$/.test($("#u-nmi").value.trim())) throw new Error("The NMI has 10 or 11 letters and digits.");
      const pem = $("#u-serca").value.trim();
      if (pem) { await api("PUT", "/api/cert/serca", undefined, pem + "\n"); S.serca = true; }
      else {
        const info = await api("GET", "/api/cert");
        if (!info.serca) throw new Error("Paste or choose the utility's SERCA certificate.");
      }
      return true;
    },
    async devices() {
      const chosen = Object.values(S.devices);
      if (!chosen.some((d) => d.use === "inverter")) throw new Error("Choose at least one inverter.");
      if (!chosen.some((d) => d.use === "meter")) throw new Error("Choose the site meter (at the grid connection).");
      return true;
    },
    async limits() {
      for (const id of ["#limit-export", "#limit-gen"]) {
        const v = $(id).value;
        if (v !== "" && !(Number(v) >= 0)) throw new Error("Limits are watts, 0 or more, or empty.");
      }
      return true;
    },
    async certificate() {
      const info = await api("GET", "/api/cert");
      if (!info.chain || info.chain.error) throw new Error("Upload the signed certificate chain first.");
      return true;
    },
    async review() {
      $("#problems").replaceChildren();
      try {
        await api("PUT", "/api/config", buildConfig());
      } catch (e) {
        if (e.doc && e.doc.problems) $("#problems").replaceChildren(...e.doc.problems.map((p) => el("li", { text: p })));
        throw e;
      }
      msg("Saved and applied.");
      history.pushState(null, "", "/dashboard");
      await route("dash");
      return true;
    },
  };

  function buildConfig() {
    const c = JSON.parse(JSON.stringify(S.config || {}));
    const chosen = Object.values(S.devices);
    c.inverters = chosen.filter((d) => d.use === "inverter").map((d) => d.config);
    const meter = chosen.find((d) => d.use === "meter");
    if (meter) c.meter = Object.assign({}, meter.config, { location: "feedin" }); else delete c.meter;
    const num = (id) => $(id).value === "" ? null : Number($(id).value);
    c.limits = Object.assign({}, c.limits || {}, { exportW: num("#limit-export"), generationW: num("#limit-gen") });
    if ($("#use-utility").checked) {
      const files = S.certFiles || (c.utility || {});
      c.utility = Object.assign({}, c.utility || {}, {
        type: "csip-aus", server: $("#u-server").value.trim().replace(/\/$/, ""),
        nmi: $("#u-nmi").value.trim().toUpperCase(), ca: files.ca, cert: files.cert, key: files.key,
      });
      const pin = $("#u-pin").value.trim();
      if (pin) c.utility.pin = Number(pin); else delete c.utility.pin;
    } else delete c.utility;
    return c;
  }

  // devices: scan results and choices
  function deviceKey(cfg) { return (cfg.tcp || cfg.rtu) + "#" + cfg.unit; }
  function addDevice(cfg, use, info) {
    const clean = Object.assign({}, cfg); delete clean.location;
    const key = deviceKey(clean);
    const old = S.devices[key];
    S.devices[key] = { config: clean, use: old ? old.use : use, info: info || (old && old.info) };
    renderDevices();
  }
  function renderDevices() {
    const rows = Object.entries(S.devices).map(([key, d]) => {
      const sel = el("select", { "data-unit": String(d.config.unit), "aria-label": "use of unit " + d.config.unit });
      [["", "not used"], ["inverter", "inverter"], ["meter", "site meter"]].forEach(([v, t]) => {
        const o = el("option", { value: v, text: t }); if (d.use === v) o.selected = true; sel.append(o);
      });
      sel.addEventListener("change", () => {
        if (sel.value === "meter") Object.values(S.devices).forEach((x) => { if (x.use === "meter") x.use = ""; });
        S.devices[key].use = sel.value; renderDevices();
      });
      const i = d.info;
      const what = i ? [i.manufacturer, i.model, i.ratedW ? W(i.ratedW) : null].filter(Boolean).join(" ") : "configured";
      return el("tr", {}, el("td", { text: d.config.unit }), el("td", { text: what + " (" + (d.config.tcp || d.config.rtu) + ")" }), el("td", {}, sel));
    });
    $("#found tbody").replaceChildren(...rows);
  }
  $("#scan-btn").addEventListener("click", async () => {
    const tcp = $("#scan-tcp").value.trim(), rtu = $("#scan-rtu").value.trim();
    const body = tcp ? { tcp } : { rtu, baud: Number($("#scan-baud").value) };
    const btn = $("#scan-btn");
    btn.disabled = true; msg("Scanning…");
    try {
      const r = await api("POST", "/api/devices/scan", body);
      r.devices.forEach((d) => addDevice(d.config, d.kind === "meter" && !Object.values(S.devices).some((x) => x.use === "meter") ? "meter" : d.kind === "inverter" ? "inverter" : "", d));
      msg(r.devices.length ? "Found " + r.devices.length + " device(s) at " + r.endpoint + "." : "No SunSpec device answered at " + r.endpoint + ".", !r.devices.length);
    } catch (e) { msg(e.message, true); }
    finally { btn.disabled = false; }
  });

  // certificate
  $("#cert-gen").addEventListener("click", async () => {
    try {
      const r = await api("POST", "/api/cert/request", {});
      $("#csr").value = r.csr; $("#csr-box").hidden = false;
      msg(r.keyCreated ? "New key created. Send the request to the utility." : "The existing key is kept; here is its request.");
    } catch (e) { msg(e.message, true); }
  });
  $("#chain-upload").addEventListener("click", async () => {
    try {
      const r = await api("PUT", "/api/cert/chain", undefined, $("#chain").value.trim() + "\n");
      const info = await api("GET", "/api/cert");
      S.certFiles = info.files;
      const roots = (info.sercaCertificates || []).flatMap((c) => [["SERCA", c.subject], ["SERCA SHA-256", c.sha256]]);
      facts($("#cert-info"), [["LFDI", r.lfdi], ["SFDI", r.sfdi], ["Remarks", r.warnings.join("; ") || "none"], ...roots]);
      msg("Certificate checked and saved.");
    } catch (e) { msg(e.message, true); }
  });

  // -- dashboard -------------------------------------------------------------------------
  // Live events; when the stream is refused or lost the page says so, polls the status every
  // 5 s meanwhile and tries the stream again every 10 s.
  function openEvents() {
    S.events = new EventSource("/api/events");
    S.events.addEventListener("status", (ev) => { livePaused(false); renderStatus(JSON.parse(ev.data)); });
    S.events.onerror = () => {
      livePaused(true);
      if (S.events && S.events.readyState === EventSource.CLOSED) {
        S.events.close(); S.events = null;
        if (!S.retry) S.retry = setTimeout(() => { S.retry = null; if (!$("#dash").hidden && !S.events) openEvents(); }, 10000);
      }
    };
  }
  async function pollStatus() {
    try { renderStatus(await api("GET", "/api/status")); } catch (e) { /* keep the last values */ }
  }
  function livePaused(on) {
    $("#live").hidden = !on;
    if (on && !S.poll) { pollStatus(); S.poll = setInterval(pollStatus, 5000); }
    if (!on && S.poll) { clearInterval(S.poll); S.poll = null; }
  }
  function startLive() {
    if (!S.events) openEvents();
    loadChart();
    if (!S.chartTimer) S.chartTimer = setInterval(loadChart, 15000);
  }
  function stopLive() {
    if (S.events) { S.events.close(); S.events = null; }
    if (S.retry) { clearTimeout(S.retry); S.retry = null; }
    livePaused(false); $("#live").hidden = true;
    if (S.chartTimer) { clearInterval(S.chartTimer); S.chartTimer = null; }
  }
  function renderStatus(st) {
    const site = st.site.powerW;
    $("#site-w").textContent = W(site === null ? null : Math.abs(site));
    $("#site-dir").textContent = site === null ? "no reading" : site < 0 ? "exporting" : "importing";
    $("#export-limit").textContent = st.limits.exportW === null ? "none" : W(st.limits.exportW);
    $("#export-source").textContent = st.limits.source.export_w || "";
    $("#der-w").textContent = W(st.der.powerW);
    $("#gen-limit").textContent = st.limits.generationW === null ? "" : "limit " + W(st.limits.generationW);
    $("#mode").textContent = st.control.mode || "–";
    $("#updated").textContent = st.time ? st.time.slice(11, 19) : "";
    $("#alerts").replaceChildren(...st.alerts.map((a) => el("li", { class: a.level, text: a.text })));
    $("#inverters").replaceChildren(...st.inverters.map((i) => el("tr", {},
      el("td", { text: [i.id, i.manufacturer, i.model].filter(Boolean).join(" · ") }),
      el("td", { text: W(i.powerW) + (i.ratedW ? " / " + W(i.ratedW) : "") }),
      el("td", { text: i.limitPct === null ? "none" : i.limitPct.toFixed(0) + " %" }),
      el("td", { class: i.online ? (i.controllable === false ? "bad" : "ok") : "bad",
        text: !i.online ? "offline" : i.controllable === false ? "not controllable" : "online" }))));
    const u = st.utility;
    if (S.nextChange && Date.parse(S.nextChange) <= Date.now()) {
      S.nextChange = null; loadChart();  // that change has happened: ask for the next one
    }
    facts($("#utility"), u.configured ? [["Link", u.connected ? "connected" : "not connected"],
      ["Last poll", u.lastPoll], ["Export limit", st.limits.source.export_w === "utility" ? W(st.limits.exportW) : "none from the utility"],
      ["Next change", S.nextChange || "none scheduled"], ["LFDI", u.lfdi], ["SFDI", u.sfdi], ["Last error", u.lastError]]
      : [["Link", "no utility configured"]]);
  }
  async function loadChart() {
    const now = Math.floor(Date.now() / 1000), span = S.range;
    const step = span <= 600 ? 5 : span <= 86400 ? 60 : span <= 604800 ? 900 : 3600;
    const q = "from=" + (now - span) + "&to=" + (now + 1) + "&step=" + step;
    $("#csv").href = "/api/history.csv?" + q;
    try {
      const [h, lim] = await Promise.all([api("GET", "/api/history?" + q), api("GET", "/api/limits")]);
      S.nextChange = lim.utility.nextChange;
      drawChart(h, now - span, now);
    } catch (e) { /* keep the last chart */ }
  }
  $$("#ranges button").forEach((b) => b.addEventListener("click", () => {
    $$("#ranges button").forEach((x) => x.classList.toggle("on", x === b));
    S.range = Number(b.dataset.range); loadChart();
  }));
  const NS = "http://www.w3.org/2000/svg";
  const sv = (tag, attrs) => { const e = document.createElementNS(NS, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
  function drawChart(h, t0, t1) {
    const svg = $("#chart"), X0 = 34, X1 = 354, Y0 = 8, Y1 = 182;
    const series = [["site", h.siteW.map((v) => v === null ? null : v)],
      ["limit", h.exportLimitW.map((v) => v === null ? null : -v)], ["der", h.derW]];
    Object.values(h.inverters).forEach((s) => series.push(["inv", s]));
    let lo = 0, hi = 1000;
    series.forEach(([, s]) => s.forEach((v) => { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }));
    const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
    const x = (t) => X0 + (X1 - X0) * (t - t0) / Math.max(1, t1 - t0);
    const y = (v) => Y1 - (Y1 - Y0) * (v - lo) / (hi - lo);
    const kids = [];
    const tick = niceStep((hi - lo) / 4);
    for (let v = Math.ceil(lo / tick) * tick; v <= hi; v += tick) {
      kids.push(sv("line", { x1: X0, x2: X1, y1: y(v), y2: y(v), class: "grid" }));
      const t = sv("text", { x: 2, y: y(v) + 3 }); t.textContent = (Math.abs(v) >= 1000 ? (v / 1000) + "k" : v); kids.push(t);
    }
    const t = sv("text", { x: X0, y: 196 }); t.textContent = new Date(t0 * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }); kids.push(t);
    const gap = Math.max(h.step * 3, 15);
    series.forEach(([cls, s]) => {
      let pts = [], prev = null;
      const flush = () => { if (pts.length > 1) kids.push(sv("polyline", { class: cls, points: pts.join(" ") })); pts = []; };
      s.forEach((v, i) => {
        const ti = h.t[i];
        if (v === null || (prev !== null && ti - prev > gap)) flush();
        if (v !== null) pts.push(x(ti).toFixed(1) + "," + y(v).toFixed(1));
        prev = ti;
      });
      flush();
    });
    svg.replaceChildren(...kids);
  }
  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
    return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || p * 10;
  }

  window.addEventListener("popstate", () => route(location.pathname === "/settings" ? "setup" : undefined));
  route(location.pathname === "/settings" ? "setup" : undefined).catch((e) => msg(e.message, true));
})();
