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
    if (raw !== undefined) { data = raw; headers["Content-Type"] = typeof raw === "string" ? "application/x-pem-file" : "application/octet-stream"; }
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
  const kW = (v) => (v === null || v === undefined) ? "–" : (v / 1000).toFixed(1);
  const Wh = (v) => (v === null || v === undefined) ? "not known" : v >= 1000 ? (v / 1000).toFixed(2) + " kWh" : Math.round(v) + " Wh";
  const hhmm = (iso) => iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "–";
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
    ["login", "setup", "dash", "report"].forEach((s) => { $("#" + s).hidden = s !== id; });
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
  // The password step stays in the list once shown, so the counter never jumps back.
  function stepsShown() {
    return STEPS.filter((s) => !(s === "certificate" && !$("#use-utility").checked) &&
      !(s === "password" && !S.pwStep));
  }
  // The running configuration; Apply is refused while it could not be read, so that nothing
  // the form failed to load is dropped by writing the form back.
  async function loadConfig() {
    try { S.config = await api("GET", "/api/config"); S.configError = null; }
    catch (e) {
      S.config = null;
      S.configError = (e.status === 401 && !S.session.passwordSet) ? "password" : e.message;
    }
    if (S.config) fillFromConfig(S.config);
    else if (S.session.setupMode) { S.config = {}; S.configError = null; fillFromConfig({}); }
  }
  async function loadWifi() {
    try {
      const wifi = S.wifi = await api("GET", "/api/wifi");
      $("#psk").value = "";
      $("#wifi-open").checked = !!(wifi.configured && wifi.open);
      if (wifi.configured) { $("#net-wifi").checked = true; $("#ssid").value = wifi.ssid || ""; $("#wifi-fields").hidden = false; }
      wifiHint();
    } catch (e) { return; /* not logged in yet */ }
    loadNetworks(); // a real radio scan takes seconds: the page does not wait for it
  }
  // The saved passphrase never comes back to the page: left empty, it is kept for the saved
  // network's name (PUT /api/wifi without psk); an open network is only ever a ticked box.
  const keepsSavedPsk = () => !!(S.wifi && S.wifi.configured && !S.wifi.open && S.wifi.ssid === $("#ssid").value && !$("#wifi-open").checked);
  function wifiHint() {
    const open = $("#wifi-open").checked, keep = keepsSavedPsk();
    if (open) $("#psk").value = "";
    $("#psk").disabled = open;
    $("#psk-hint").hidden = !keep;
    $("#psk").placeholder = keep ? "leave empty to keep the saved passphrase" : "";
  }
  $("#ssid").addEventListener("input", wifiHint);
  $("#wifi-open").addEventListener("change", wifiHint);
  async function loadNetworks() {
    $("#wifi-seen").textContent = "Looking for networks in range…";
    try {
      const seen = await api("GET", "/api/wifi/networks");
      $("#ssids").replaceChildren(...seen.networks.map((n) => el("option", { value: n.ssid })));
      $("#wifi-seen").textContent = seen.networks.length ? "In range: " + seen.networks.map((n) => n.ssid + " (" + n.signal + ")").join(", ") : (seen.error || "No network in range.");
    } catch (e) { $("#wifi-seen").textContent = "The networks in range could not be listed: " + e.message; }
  }
  async function startSetup() {
    show("setup");
    S.pwStep = !S.session.passwordSet;
    S.devices = {};
    $("#reach").hidden = true;
    await loadConfig();
    await loadWifi();
    await loadZones();
    await loadCert();
    S.step = 0;
    renderStep();
  }
  async function loadZones() {
    if (S.zones) return;
    try {
      S.zones = await api("GET", "/api/timezones");
      const sel = $("#site-tz"), au = el("optgroup", { label: "Australia" }), all = el("optgroup", { label: "Everywhere else" });
      S.zones.australia.forEach((z) => au.append(el("option", { value: z, text: z.replace("Australia/", "").replace("_", " ") })));
      S.zones.all.filter((z) => !S.zones.australia.includes(z)).forEach((z) => all.append(el("option", { value: z, text: z })));
      sel.append(au, all);
      const tz = ((S.config || {}).site || {}).timeZone;
      if (tz) showZone(tz);
    } catch (e) { /* the select keeps "not set"; buildConfig then keeps the configured zone */ }
  }
  // The configured zone is shown even when the list lacks it: set to a value it does not
  // offer, the select read "" and Apply dropped the zone (found by review).
  function showZone(tz) {
    const sel = $("#site-tz");
    if (![...sel.options].some((o) => o.value === tz)) sel.append(el("option", { value: tz, text: tz }));
    sel.value = tz;
  }
  function fillFromConfig(c) {
    const u = c.utility;
    $("#use-utility").checked = !!u || !!S.session.setupMode;
    $("#utility-fields").hidden = !$("#use-utility").checked;
    const tz = (c.site || {}).timeZone;
    if (tz) showZone(tz); else $("#site-tz").value = "";
    if (u) { $("#u-server").value = u.server; $("#u-nmi").value = u.nmi; $("#u-pin").value = u.pin ?? ""; }
    const lim = c.limits || {};
    $("#limit-export").value = lim.exportW ?? "";
    $("#limit-gen").value = lim.generationW ?? "";
    (c.inverters || []).forEach((d) => addDevice(d, "inverter", null));
    // a hybrid inverter's storage is the same device under both lists: "inverter + battery"
    (c.batteries || []).forEach((d) => {
      const old = S.devices[deviceKey(d)];
      addDevice(d, old && old.use === "inverter" ? "inverter+battery" : "battery", null, d);
      if (old && old.use === "inverter") { S.devices[deviceKey(d)].use = "inverter+battery"; renderDevices(); }
    });
    if (c.meter) addDevice(c.meter, "meter", null);
  }
  function renderStep() {
    const steps = stepsShown();
    const name = steps[S.step];
    $$(".step").forEach((s) => s.classList.toggle("on", s.dataset.step === name));
    $("#steps").replaceChildren(...steps.map((_, i) => el("li", { class: i <= S.step ? "done" : "" })));
    $("#step-count").textContent = (S.step + 1) + " / " + steps.length;
    // once set, the password is not set again by going back
    $("#back").disabled = S.step === 0 || (steps[S.step - 1] === "password" && S.session.passwordSet);
    $("#next").textContent = name === "review" ? "Apply" : "Next";
    $("#problems").replaceChildren();
    if (name === "review") renderReview();
  }
  $("#back").addEventListener("click", () => { S.step = Math.max(0, S.step - 1); msg(""); renderStep(); });
  $("#next").addEventListener("click", async () => {
    if (S.applied) { S.applied = false; history.pushState(null, "", "/dashboard"); await route("dash"); return; }
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
      // now logged in: the form is filled with the running configuration
      S.devices = {};
      await loadConfig();
      await loadWifi();
      await loadCert();
      if (S.configError) throw new Error("The running configuration could not be read: " + S.configError);
      return true;
    },
    async network() {
      if (!$("#net-wifi").checked) { S.wifi = await api("DELETE", "/api/wifi"); return true; }
      const ssid = $("#ssid").value, psk = $("#psk").value, body = { ssid };
      if (!ssid) throw new Error("Enter the Wi-Fi network's name.");
      if ($("#wifi-open").checked) body.open = true;
      else if (psk !== "") body.psk = psk;
      else if (!keepsSavedPsk()) throw new Error("Enter the password of " + ssid + ", or tick \"Open network\" if it has none.");
      S.wifi = await api("PUT", "/api/wifi", body);
      $("#psk").value = ""; wifiHint();
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
      if (!chosen.some((d) => d.use === "inverter" || d.use === "inverter+battery")) throw new Error("Choose at least one inverter.");
      if (!chosen.some((d) => d.use === "meter")) throw new Error("Choose the site meter (at the grid connection).");
      const blind = chosen.filter((d) => d.use === "inverter" && d.info && d.info.controllable === false);
      if (blind.length && !confirm("Unit " + blind.map((d) => d.config.unit).join(", ") + " has no SunSpec control model: dynexport can read it but never limit it. Use it anyway?")) return false;
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
      if (!info.key) throw new Error("Create the device key and request first.");
      if (info.chain && info.chain.error) throw new Error("The stored certificate is damaged: " + info.chain.error);
      S.certFiles = info.files;
      S.chainPending = !info.chain;
      return true;
    },
    async review() {
      $("#problems").replaceChildren();
      if (S.configError) throw new Error("The running configuration could not be read (" + S.configError + "): reload the page. Apply is off so that nothing is dropped.");
      let r;
      try {
        r = await api("PUT", "/api/config", buildConfig());
      } catch (e) {
        if (e.doc && e.doc.problems) $("#problems").replaceChildren(...e.doc.problems.map((p) => el("li", { text: p })));
        throw e;
      }
      S.config = r.config;
      const reach = await api("GET", "/api/session");
      const where = (reach.reach || []).map((a) => "http://" + a + "/");
      $("#reach").replaceChildren(el("b", { text: "Saved and applied. " }),
        document.createTextNode("To reach this device again open " + (where.join(" or ") || location.origin + "/") + "."),
        ...(r.pending || []).map((p) => el("p", { text: p })));
      $("#reach").hidden = false;
      msg("");
      $$(".step").forEach((x) => x.classList.remove("on"));
      $("#next").textContent = "Open the dashboard";
      S.applied = true;
      return false;
    },
  };

  function renderReview() {
    const c = buildConfig(), u = c.utility, lim = c.limits || {};
    const dev = (d) => (d.tcp || d.rtu) + " unit " + d.unit;
    facts($("#summary"), [
      ["Utility", u ? u.server + " (NMI " + u.nmi + (u.pin ? ", PIN set" : "") + ")" : "none: fixed limits only"],
      ["Certificate", !u ? "not needed" : S.chainPending ? "waiting for the signed certificate (export held at " + W((u.fallbackExportW ?? 1500)) + " meanwhile)" : "signed certificate saved"],
      ["Inverters", (c.inverters || []).map(dev).join("; ") || "none"],
      ["Batteries", (c.batteries || []).map(dev).join("; ") || "none"],
      ["Site meter", c.meter ? dev(c.meter) : "none"],
      ["Export limit", lim.exportW === null || lim.exportW === undefined ? "none of your own" : W(lim.exportW)],
      ["Generation limit", lim.generationW === null || lim.generationW === undefined ? "none" : W(lim.generationW)],
      ["Time zone", (c.site || {}).timeZone || "not set (UTC)"],
      ["Network", $("#net-wifi").checked ? "Wi-Fi " + $("#ssid").value + ($("#wifi-open").checked ? " (open network)" : "") : "Ethernet"],
    ]);
    $("#review").textContent = JSON.stringify(c, null, 2);
  }
  function buildConfig() {
    const c = JSON.parse(JSON.stringify(S.config || {}));
    const chosen = Object.values(S.devices);
    c.inverters = chosen.filter((d) => d.use === "inverter" || d.use === "inverter+battery").map((d) => d.config);
    const batteries = chosen.filter((d) => d.use === "battery" || d.use === "inverter+battery").map((d) => d.bconfig || d.config);
    if (batteries.length) c.batteries = batteries; else delete c.batteries;
    const meter = chosen.find((d) => d.use === "meter");
    if (meter) c.meter = Object.assign({}, meter.config, { location: "feedin" }); else delete c.meter;
    const num = (id) => $(id).value === "" ? null : Number($(id).value);
    c.limits = Object.assign({}, c.limits || {}, { exportW: num("#limit-export"), generationW: num("#limit-gen") });
    const tz = $("#site-tz").value;
    if (tz) c.site = Object.assign({}, c.site || {}, { timeZone: tz });
    else if (c.site && S.zones) delete c.site.timeZone; // the list never came: keep the zone
    if ($("#use-utility").checked) {
      // The configured files stay: a key made by `dynexport cert request --dir ...` is the site's
      // registered identity. Only a new utility gets the files the certificate step uses.
      const old = c.utility || {}, files = S.certFiles || {};
      c.utility = Object.assign({}, old, {
        type: "csip-aus", server: $("#u-server").value.trim().replace(/\/$/, ""),
        nmi: $("#u-nmi").value.trim().toUpperCase(), ca: old.ca || files.ca, cert: old.cert || files.cert, key: old.key || files.key,
      });
      const pin = $("#u-pin").value.trim();
      if (pin) c.utility.pin = Number(pin); else delete c.utility.pin;
    } else delete c.utility;
    return c;
  }

  // devices: scan results and choices
  function deviceKey(cfg) { return (cfg.tcp || cfg.rtu) + "#" + cfg.unit; }
  // bcfg: the device as a battery (its own settings: reserve, convention…), when it is one
  function addDevice(cfg, use, info, bcfg) {
    const clean = Object.assign({}, cfg); delete clean.location;
    for (const k of ["maxSocPct", "reserveSocPct", "eveningSocPct", "capacityWh", "convention", "dischargePositive", "plan"]) delete clean[k];
    const key = deviceKey(clean);
    const old = S.devices[key];
    // a device found again keeps the role chosen (or configured) for it
    S.devices[key] = { config: old ? old.config : clean, use: old ? old.use : use, info: info || (old && old.info),
      bconfig: (old && old.bconfig) || bcfg || null };
    renderDevices();
  }
  function usesOf(d) {
    const roles = (d.info && d.info.roles) || [];
    const all = [["", "not used"], ["inverter", "inverter"], ["meter", "site meter"], ["battery", "battery"]];
    if (roles.includes("inverter") && roles.includes("battery") || d.use === "inverter+battery") all.push(["inverter+battery", "inverter + battery"]);
    return all;
  }
  function renderDevices() {
    const rows = Object.entries(S.devices).map(([key, d]) => {
      const sel = el("select", { "data-unit": String(d.config.unit), "aria-label": "use of unit " + d.config.unit });
      usesOf(d).forEach(([v, t]) => {
        const o = el("option", { value: v, text: t }); if (d.use === v) o.selected = true; sel.append(o);
      });
      sel.addEventListener("change", () => {
        if (sel.value === "meter") Object.values(S.devices).forEach((x) => { if (x.use === "meter") x.use = ""; });
        S.devices[key].use = sel.value; renderDevices();
      });
      const i = d.info;
      const what = i ? [i.manufacturer, i.model, i.ratedW ? W(i.ratedW) : null].filter(Boolean).join(" ") : "configured";
      const cell = el("td", { text: what + " (" + (d.config.tcp || d.config.rtu) + ")" });
      if (i && i.warning) cell.append(el("br"), el("small", { class: "bad", text: "⚠ " + i.warning }));
      return el("tr", {}, el("td", { text: d.config.unit }), cell, el("td", {}, sel));
    });
    $("#found tbody").replaceChildren(...rows);
  }
  $("#scan-btn").addEventListener("click", async () => {
    const tcp = $("#scan-tcp").value.trim(), rtu = $("#scan-rtu").value.trim();
    const body = tcp ? { tcp } : { rtu, baud: Number($("#scan-baud").value) };
    const btn = $("#scan-btn"), prog = $("#scan-progress");
    btn.disabled = true; msg("Scanning…");
    prog.hidden = false; prog.textContent = "Starting…";
    const timer = setInterval(async () => {
      try {
        const p = await api("GET", "/api/devices/scan");
        if (!p.units) return;
        const words = { found: "found", "not-sunspec": "not SunSpec", "no-answer": "no answer", error: "error" };
        prog.textContent = "Probed " + p.probed.length + " of " + p.units.length + ": " +
          p.probed.map((u) => "unit " + u.unit + " " + words[u.result]).join(", ");
      } catch (e) { /* the scan's own answer says what went wrong */ }
    }, 400);
    try {
      const r = await api("POST", "/api/devices/scan", body);
      r.devices.forEach((d) => {
        const roles = d.roles || [], storage = roles.includes("battery");
        const use = d.kind === "meter" && !Object.values(S.devices).some((x) => x.use === "meter") ? "meter"
          : d.kind === "inverter" && d.controllable !== false ? (storage ? "inverter+battery" : "inverter")
          : storage ? "battery" : "";
        addDevice(d.config, use, d, d.batteryConfig || null);
      });
      msg(r.devices.length ? "Found " + r.devices.length + " device(s) at " + r.endpoint + "." : "Devices answered at " + r.endpoint + " but none is SunSpec.", !r.devices.length);
    } catch (e) { msg(e.message, true); }
    finally { clearInterval(timer); prog.hidden = true; btn.disabled = false; }
  });

  // certificate
  async function loadCert() {
    try {
      const info = await api("GET", "/api/cert");
      S.certFiles = info.files;
      S.chainPending = !info.chain;
      $("#cert-replace").hidden = !info.key;
      $("#cert-gen").textContent = info.key ? "Show the request for this key" : "Create key and request";
      facts($("#lfdi-now"), [["Device key", info.key ? "present (" + info.files.key + ")" : "none yet"],
        ["LFDI in use", info.chain && info.chain.lfdi ? info.chain.lfdi : "none yet (no signed certificate)"]]);
    } catch (e) { /* not logged in yet */ }
  }
  $("#cert-gen").addEventListener("click", async () => {
    try {
      const r = await api("POST", "/api/cert/request", {});
      $("#csr").value = r.csr; $("#csr-box").hidden = false;
      msg(r.keyCreated ? "New key created. Send the request to the utility." : "The existing key is kept; here is its request.");
      await loadCert();
    } catch (e) { msg(e.message, true); }
  });
  $("#cert-replace").addEventListener("click", async () => {
    const info = await api("GET", "/api/cert").catch(() => ({}));
    const lfdi = info.chain && info.chain.lfdi ? info.chain.lfdi : "none yet";
    const ok = confirm("Replace the device key?\n\nThe new key has a new LFDI. The utility must register the new LFDI " +
      "and sign a new certificate before this site receives its limits again; until then export is held at the " +
      "fallback limit.\n\nLFDI in use now: " + lfdi);
    if (!ok) { msg("The key was kept."); return; }
    try {
      const r = await api("POST", "/api/cert/request", { replace: true, confirm: true });
      $("#csr").value = r.csr; $("#csr-box").hidden = false;
      msg("Key replaced. LFDI before: " + (r.previousLfdi || "none") + "; after: none until the utility signs the new request.");
      await loadCert();
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
      await loadCert();
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
    S.status = st;
    const site = st.site.powerW, lim = st.limits.exportW;
    // the cards and the chart share one sign: export up (positive), import down
    $("#site-w").textContent = site === null ? "–" : W(Math.abs(site));
    $("#site-dir").textContent = site === null ? "no reading" : site < 0 ? "exporting" : "importing";
    $("#export-limit").textContent = lim === null ? "none" : W(lim);
    const exporting = site === null ? null : Math.max(0, -site);
    $("#export-source").textContent = lim === null ? "" :
      (exporting === null ? "" : kW(exporting) + " of " + kW(lim) + " kW used · ") + (st.limits.source.export_w || "");
    $("#der-w").textContent = W(st.der.powerW);
    $("#gen-limit").textContent = st.limits.generationW === null ? (st.der.availableW !== null && st.der.availableW !== undefined ? "could make " + W(st.der.availableW) : "") : "limit " + W(st.limits.generationW);
    $("#mode").textContent = st.control.mode || "–";
    $("#updated").textContent = st.time ? "at " + new Date(st.time).toLocaleTimeString() : "";
    renderBattery(st.battery);
    const alertsNow = JSON.stringify(st.alerts);  // redrawn only when they change
    if (alertsNow !== S.alerts) renderAlerts(st.alerts, alertsNow);
    renderRest(st);
  }
  // What the battery's mode means to an owner (docs/web.md, "Battery").
  const BAT_MODES = {
    own: "its own mode (self-consumption)",
    engaged: "dynexport steers it",
    offline: "not answering: it follows its own mode",
    failsafe: "fail-safe: the meter is quiet, so it may charge but not discharge",
  };
  function renderBattery(b) {
    const on = !!(b && b.configured);
    $("#battery").hidden = !on;
    if (!on) return;
    $("#bat-soc").textContent = b.socPct === null || b.socPct === undefined ? "–" : Math.round(b.socPct) + " %";
    // status power: + discharging (into the house or grid), − charging
    const p = b.powerW;
    $("#bat-power").textContent = p === null || p === undefined ? "no reading" :
      Math.abs(p) < 20 ? "idle" : (p < 0 ? "charging " : "discharging ") + W(Math.abs(p));
    const words = BAT_MODES[b.mode] || "not steered yet";
    $("#bat-mode").textContent = words + (b.reason ? ": " + b.reason : "");
  }
  function renderAlerts(alerts, text) {
    S.alerts = text;
    $("#alerts").replaceChildren(...alerts.map((a) => {
      const li = el("li", { class: a.level, text: a.text });
      if (a.code === "no-password") {
        const b = el("a", { href: "/settings", text: " Set it now" });
        b.addEventListener("click", (ev) => { ev.preventDefault(); history.pushState(null, "", "/settings"); route("setup"); });
        li.append(b);
      }
      return li;
    }));
  }
  function renderRest(st) {
    $("#inverters").replaceChildren(...st.inverters.map((i) => el("tr", {},
      el("td", { text: [i.id, i.manufacturer, i.model].filter(Boolean).join(" · ") }),
      el("td", { text: W(i.powerW) + (i.ratedW ? " / " + W(i.ratedW) : "") }),
      el("td", { text: i.limitPct === null ? "none" : i.limitPct.toFixed(0) + " %" }),
      el("td", { class: i.online ? (i.controllable === false ? "bad" : "ok") : "bad",
        text: !i.online ? "offline" : i.controllable === false ? "not controllable" : "online" }))));
    const e = st.energyToday || {};
    facts($("#energy"), [["Exported", Wh(e.exportedWh)], ["Imported", Wh(e.importedWh)], ["Generated", Wh(e.generatedWh)],
      ["Curtailed (what the limits cost)", e.curtailedWh === null || e.curtailedWh === undefined ? "not known (the inverters do not report available power)" : Wh(e.curtailedWh)],
      ...(st.battery && st.battery.configured ? [["Stored instead of curtailed", Wh(st.battery.storedInsteadOfCurtailedTodayWh)]] : []),
      ["Counted since", e.since ? new Date(e.since).toLocaleString() : "–"]]);
    const u = st.utility;
    if (S.nextChange && Date.parse(S.nextChange.from) <= Date.now()) {
      S.nextChange = null; loadChart();  // that change has happened: ask for the next one
    }
    const nc = S.nextChange;
    $("#next-change").textContent = nc ? "Next change at " + hhmm(nc.from) + ": export limit " + (nc.exportW === null ? "none" : W(nc.exportW)) + " (" + (nc.source.export_w || "no source") + ")" : "No limit change in the next 24 hours.";
    const link = !u.configured ? "no utility configured" : u.waitingForCertificate ? "waiting for the signed certificate" : u.connected ? "connected" : "not connected";
    facts($("#utility"), u.configured ? [["Link", link],
      ["Last poll", u.lastPoll ? new Date(u.lastPoll).toLocaleString() : "–"], ["Export limit", st.limits.source.export_w === "utility" ? W(st.limits.exportW) : "none from the utility"],
      ["LFDI", u.lfdi], ["SFDI", u.sfdi], ["Last error", u.lastError]]
      : [["Link", link]]);
    renderTools(st);
  }
  async function loadChart() {
    const now = Math.floor(Date.now() / 1000), span = S.range;
    const step = span <= 600 ? 5 : span <= 86400 ? 60 : span <= 604800 ? 900 : 3600;
    const q = "from=" + (now - span) + "&to=" + (now + 1) + "&step=" + step;
    $("#csv").href = "/api/history.csv?" + q;
    try {
      const [h, lim] = await Promise.all([api("GET", "/api/history?" + q), api("GET", "/api/limits")]);
      S.nextChange = lim.outlook.length > 1 ? lim.outlook[1] : null;
      drawChart(h, now - span, now);
      drawOutlook(lim.outlook, now);
    } catch (e) { /* keep the last chart */ }
  }
  $$("#ranges button").forEach((b) => b.addEventListener("click", () => {
    $$("#ranges button").forEach((x) => x.classList.toggle("on", x === b));
    S.range = Number(b.dataset.range); loadChart();
  }));
  const NS = "http://www.w3.org/2000/svg";
  const sv = (tag, attrs, text) => { const e = document.createElementNS(NS, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; };
  const INV_COLOURS = ["#7b3fa0", "#2e7d32", "#00838f", "#6d4c41", "#c2185b", "#455a64"];
  function timeLabel(t, span) {
    const d = new Date(t * 1000);
    return span > 2 * 86400 ? d.toLocaleDateString([], { day: "numeric", month: "short" }) : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  function axes(kids, X0, X1, Y0, Y1, lo, hi, t0, t1, y) {
    const tick = niceStep((hi - lo) / 4);
    for (let v = Math.ceil(lo / tick) * tick; v <= hi; v += tick) {
      kids.push(sv("line", { x1: X0, x2: X1, y1: y(v), y2: y(v), class: v === 0 ? "zero" : "grid" }));
      kids.push(sv("text", { x: X0 - 3, y: y(v) + 3, "text-anchor": "end" }, (v / 1000).toFixed(tick < 1000 ? 1 : 0)));
    }
    kids.push(sv("text", { x: 2, y: Y0 - 1 }, "kW"));
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (t1 - t0) * i / 4, x = X0 + (X1 - X0) * i / 4;
      kids.push(sv("line", { x1: x, x2: x, y1: Y1, y2: Y1 + 3, class: "grid" }));
      kids.push(sv("text", { x, y: Y1 + 13, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, timeLabel(t, t1 - t0)));
    }
  }
  function drawChart(h, t0, t1) {
    const svg = $("#chart"), X0 = 30, X1 = 354, Y0 = 12, Y1 = 186;
    // export is drawn up (positive), like the cards; import goes below zero
    const series = [["site", "Site export (import below 0)", h.siteW.map((v) => v === null ? null : -v), null],
      ["limit", "Export limit", h.exportLimitW, null], ["der", "Solar (all inverters)", h.derW, null]];
    Object.entries(h.inverters).forEach(([name, s], i) => series.push(["inv", name, s, INV_COLOURS[i % INV_COLOURS.length]]));
    // the battery's power as the status gives it: discharging above 0, charging below
    if ((h.batteryW || []).some((v) => v !== null)) series.push(["bat", "Battery (discharging above 0, charging below)", h.batteryW, null]);
    let lo = 0, hi = 1000;
    series.forEach(([, , s]) => s.forEach((v) => { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }));
    const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
    const x = (t) => X0 + (X1 - X0) * (t - t0) / Math.max(1, t1 - t0);
    const y = (v) => Y1 - (Y1 - Y0) * (v - lo) / (hi - lo);
    const kids = [];
    axes(kids, X0, X1, Y0, Y1, lo, hi, t0, t1, y);
    const gap = Math.max(h.step * 3, 15);
    series.forEach(([cls, , s, colour]) => {
      let pts = [], prev = null;
      const flush = () => { if (pts.length > 1) { const p = sv("polyline", { class: cls, points: pts.join(" ") }); if (colour) p.style.stroke = colour; kids.push(p); } pts = []; };
      s.forEach((v, i) => {
        const ti = h.t[i];
        if (v === null || (prev !== null && ti - prev > gap)) flush();
        if (v !== null) pts.push(x(ti).toFixed(1) + "," + y(v).toFixed(1));
        prev = ti;
      });
      flush();
    });
    svg.replaceChildren(...kids);
    $("#legend").replaceChildren(...series.flatMap(([cls, name, , colour]) => {
      const i = el("i", { class: "l-" + cls });
      if (colour) i.style.background = colour;
      return [i, document.createTextNode(name + " ")];
    }));
  }
  function drawOutlook(outlook, now) {
    const svg = $("#outlook"), X0 = 30, X1 = 354, Y0 = 12, Y1 = 106, t0 = now, t1 = now + 86400;
    const vals = outlook.map((o) => o.exportW).filter((v) => v !== null);
    const hi = Math.max(1000, ...vals) * 1.15, lo = 0;
    const x = (t) => X0 + (X1 - X0) * Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
    const y = (v) => v === null ? Y0 : Y1 - (Y1 - Y0) * (v - lo) / (hi - lo);
    const kids = [];
    axes(kids, X0, X1, Y0, Y1, lo, hi, t0, t1, y);
    let d = "";
    outlook.forEach((o, i) => {
      const a = Math.max(t0, Date.parse(o.from) / 1000), b = i + 1 < outlook.length ? Date.parse(outlook[i + 1].from) / 1000 : t1;
      d += (i === 0 ? "M" : "L") + x(a).toFixed(1) + "," + y(o.exportW).toFixed(1) + "L" + x(b).toFixed(1) + "," + y(o.exportW).toFixed(1);
      if (i > 0) kids.push(sv("text", { x: x(a) + 2, y: y(o.exportW) - 3, class: "step-label" }, o.exportW === null ? "none" : kW(o.exportW)));
    });
    if (d) kids.push(sv("path", { d, class: "outlook-line" }));
    svg.replaceChildren(...kids);
  }
  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
    return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || p * 10;
  }

  // -- installer tools (logged in) ---------------------------------------------------------
  function renderTools(st) {
    const on = !!(S.session && S.session.loggedIn) && !st.setupMode;
    $("#tools").hidden = !on;
    if (!on) return;
    const sel = $("#t-inv"), ids = st.inverters.map((i) => i.id);
    if (sel.options.length !== ids.length) sel.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
    const t = (st.tools && st.tools.tests || [])[0];
    if (t) {
      const inv = st.inverters.find((i) => i.id === t.inverter) || {};
      $("#t-out").textContent = t.inverter + " limited to " + t.pct + " % for " + t.remainingS.toFixed(0) + " s more: output " + W(inv.powerW) + " (was " + W(t.beforeW) + ", lowest " + W(t.lowestW) + ")";
    } else if (S.testDone) $("#t-out").textContent = S.testDone;
    renderUpdateCheck(st.update);
  }
  $("#t-go").addEventListener("click", async () => {
    try {
      const r = await api("POST", "/api/tools/test-limit", { inverter: $("#t-inv").value, pct: Number($("#t-pct").value), seconds: Number($("#t-s").value) });
      S.testDone = "Test of " + r.inverter + " at " + r.pct + " % ended: the controller's limit is back.";
      $("#t-out").textContent = "Limiting " + r.inverter + " to " + r.pct + " %…";
    } catch (e) { $("#t-out").textContent = e.message; }
  });
  $("#m-go").addEventListener("click", async () => {
    const b = $("#m-go"); b.disabled = true; $("#m-out").textContent = "Checking (up to 30 s)…";
    try { const r = await api("POST", "/api/tools/meter-check", {}); $("#m-out").textContent = (r.ok === true ? "✔ " : r.ok === false ? "✖ " : "") + r.text; $("#m-out").className = "note " + (r.ok === false ? "bad" : r.ok ? "ok" : ""); }
    catch (e) { $("#m-out").textContent = e.message; }
    finally { b.disabled = false; }
  });
  $("#r-go").addEventListener("click", async () => {
    try {
      const r = await api("GET", "/api/tools/report");
      facts($("#r-facts"), [["Made", new Date(r.generated).toLocaleString()], ["NMI", r.nmi || "no utility"], ["Utility", r.utilityServer || "–"],
        ["LFDI", r.lfdi || "none yet"], ["SFDI", r.sfdi || "–"], ["Time zone", r.timeZone || "not set (UTC)"],
        ["Export limit (installer)", r.limits.exportW === null ? "none" : W(r.limits.exportW)],
        ["Export limit in force", (r.limitsInForce.exportW === null ? "none" : W(r.limitsInForce.exportW)) + " (" + (r.limitsInForce.source.export_w || "no source") + ")"],
        ["Open alerts", r.alerts.map((a) => a.text).join("; ") || "none"]]);
      $("#r-devices").replaceChildren(...r.devices.map((d) => el("tr", {}, el("td", { text: d.role }),
        el("td", { text: [d.manufacturer, d.model].filter(Boolean).join(" ") || d.id }), el("td", { text: d.serial || "–" }), el("td", { text: d.firmware || "–" }))));
      const tests = r.tests.map((t) => "Test limit " + t.inverter + " " + t.pct + " % at " + new Date(t.at).toLocaleString() + ": output " + W(t.beforeW) + " → lowest " + W(t.lowestW));
      if (r.meterCheck) tests.push("Meter direction (" + new Date(r.meterCheck.at).toLocaleString() + "): " + r.meterCheck.text);
      $("#r-tests").replaceChildren(...(tests.length ? tests : ["No test run yet."]).map((t) => el("li", { text: t })));
      show("report");
    } catch (e) { msg(e.message, true); }
  });
  $("#r-back").addEventListener("click", () => show("dash"));
  $("#r-print").addEventListener("click", () => window.print());
  $("#b-put").addEventListener("change", async () => {
    const f = $("#b-put").files[0]; if (!f) return;
    try {
      const doc = JSON.parse(await f.text());
      const r = await api("POST", "/api/config/restore", doc);
      $("#b-out").textContent = "Restored and applied." + (r.secretsKept.length ? " Kept this device's " + r.secretsKept.join(", ") + "." : "");
    } catch (e) { $("#b-out").textContent = "Not restored: " + e.message + (e.doc && e.doc.problems ? " — " + e.doc.problems.join("; ") : ""); }
    $("#b-put").value = "";
  });
  // Software update: the bundle goes up in pieces (the bar and the message follow each one), the
  // device checks its signature and the page shows its version and signer; only then the install.
  const MAX_BUNDLE = 256 * 1024 * 1024, PIECE = 192 * 1024;
  const capital = (t) => t ? t.charAt(0).toUpperCase() + t.slice(1) : "";
  const mb = (n) => (n / 1e6).toFixed(1);
  // What the update URL found (docs/update.md, "The update URL"), above the upload; absent when
  // no update URL is configured.
  function renderUpdateCheck(u) {
    const c = u && u.check;
    let p = $("#u-url");
    if (!c || !c.configured) { if (p) p.hidden = true; return; }
    if (!p) { p = el("p", { id: "u-url", class: "note", role: "status" }); $("#u-file").before(p); }
    const a = u.available, parts = [];
    if (c.message) parts.push(capital(c.message));
    if (a) parts.push("Bundle " + a.version + ", " + mb(a.size) + " MB" + (a.notes ? ": " + a.notes : ""));
    if (c.error) parts.push("The last check failed: " + c.error);
    parts.push(c.lastCheck ? "Checked " + new Date(c.lastCheck).toLocaleString() : "Not checked yet");
    const text = "Update URL (" + (c.install === "auto" ? "installs automatically" : "shows new versions") + "): " + parts.join(". ") + ".";
    if (p.textContent !== text) p.textContent = text;
    p.className = "note" + (c.error ? " bad" : "");
    p.hidden = false;
  }
  function updateSays(text, bad) { const o = $("#u-out"); o.textContent = text; o.className = "note" + (bad ? " bad" : ""); }
  $("#u-file").addEventListener("change", async () => {
    const input = $("#u-file"), f = input.files[0]; if (!f) return;
    const bar = $("#u-bar");
    $("#u-install").hidden = true; facts($("#u-info"), []); bar.value = 0; bar.hidden = false; input.disabled = true;
    try {
      if (f.size === 0) throw new Error("refused, nothing was written: this file is empty");
      if (f.size > MAX_BUNDLE) throw new Error("refused, nothing was written: this file is larger than any update bundle (" + mb(MAX_BUNDLE) + " MB at most)");
      updateSays("Uploading: 0 % (0.0 of " + mb(f.size) + " MB)");
      await api("POST", "/api/update/upload", { size: f.size });
      for (let at = 0; at < f.size; at += PIECE) {
        await api("PUT", "/api/update/upload?offset=" + at, undefined, await f.slice(at, at + PIECE).arrayBuffer());
        const done = Math.min(f.size, at + PIECE);
        bar.value = done / f.size;
        updateSays("Uploading: " + Math.floor(100 * done / f.size) + " % (" + mb(done) + " of " + mb(f.size) + " MB)");
      }
      updateSays("Checking the signature…");
      const r = await api("POST", "/api/update/check", {});
      facts($("#u-info"), [["File", f.name + " (" + mb(f.size) + " MB)"], ["Version", r.bundle.version], ["Signed by", r.bundle.signer + " (verified by this device)"], ["For", r.bundle.compatible]]);
      updateSays("Ready to install.");
      $("#u-install").hidden = false;
    } catch (e) { updateSays(capital(e.message), true); bar.hidden = true; input.value = ""; }  // the same file can be chosen again
    finally { input.disabled = false; }
  });
  $("#u-install").addEventListener("click", async () => {
    if (!confirm("Install this update? Control goes on; the device restarts into it once the meter and an inverter answer, at a quiet moment, with every inverter at its fail-safe limit first.")) return;
    $("#u-install").hidden = true; $("#u-file").disabled = true;
    try {
      let u = await api("POST", "/api/update/install", {}), lost = false;
      while (u.phase === "installing") {
        updateSays("Installing: " + (u.progress.slice(-1)[0] || "starting…") + (lost ? " (the device does not answer: asking again)" : ""));
        await new Promise((ok) => setTimeout(ok, 1000));
        try { u = (await api("GET", "/api/update")).upload; lost = false; }
        catch (e) { if (e.status === 401) throw e; lost = true; }
      }
      if (u.phase === "installed") updateSays("Installed: the device restarts into it once the meter and an inverter answer, at a quiet moment, with every inverter at its fail-safe limit first.");
      else { updateSays(capital(u.error || u.phase), true); $("#u-bar").hidden = true; }
    } catch (e) { updateSays(capital(e.message), true); $("#u-bar").hidden = true; }
    finally { $("#u-file").disabled = false; $("#u-file").value = ""; }  // the upload is used up: choose it again
  });

  window.addEventListener("popstate", () => route(location.pathname === "/settings" ? "setup" : undefined));
  route(location.pathname === "/settings" ? "setup" : undefined).catch((e) => msg(e.message, true));
})();
