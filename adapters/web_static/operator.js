"use strict";
// The operator inbox: conversations waiting for a person, those a person has answered (one section per person)
// and those the assistant handles, live (server-sent events); a transcript with images, kept scrolled to the
// newest message; a reply box that delivers into the user's platform. Keyboard: ↑/↓ move between conversations,
// Enter opens one, Ctrl+Enter (⌘+Enter) sends. The token stays in this tab (sessionStorage). #quality: answers
// rated 👎 and corrected drafts with what was asked, filters, and a chart of feedback per day.
(() => {
  const ui = JSON.parse(document.body.dataset.ui || "{}");
  const lang = document.documentElement.lang || "en";
  const $ = (id) => document.getElementById(id);
  const t = (key) => ui[key] || key;
  document.querySelectorAll("[data-t]").forEach((el) => { el.textContent = t(el.dataset.t); });
  document.querySelectorAll("[data-t-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.tPlaceholder); });
  $("signout").textContent = t("sign_out");

  let token = sessionStorage.getItem("operator-token") || "";
  let name = sessionStorage.getItem("operator-name") || "";
  let selected = "";
  let ticket = "";
  let events = null;
  let listTimer = 0;
  let skew = 0; // server clock minus ours
  let cursor = ""; // the conversation the arrow keys are on
  let shown = ""; // the conversation the log shows
  let stick = true; // keep the log at its newest message (until the operator scrolls up to read)
  let touchedAt = 0; // when the operator last wheeled, dragged or touched the log
  // brand names stay as they are in every language
  const PLATFORMS = { telegram: "Telegram", slack: "Slack", chatwoot: "Chatwoot", web: "Web" };
  const platformName = (p) => PLATFORMS[p] || p;

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + token }, options.headers || {});
    if (options.body) headers["Content-Type"] = "application/json";
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (response.status === 401 || response.status === 404 && path === "/api/operator/conversations") {
      signOut(true);
      throw new Error("not signed in");
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  function duration(seconds) {
    // SI-style abbreviations read the same in every language of the page
    const [value, unit] = seconds < 60 ? [seconds, "s"] : seconds < 3600 ? [seconds / 60, "min"]
      : seconds < 172800 ? [seconds / 3600, "h"] : [seconds / 86400, "d"];
    return new Intl.NumberFormat(lang).format(Math.floor(value)) + "\u00a0" + unit;
  }

  function displayName(conv) {
    // a web visitor has no name: a small number the store gave their conversation tells them apart
    if (conv.platform === "web") return conv.number ? t("visitor").replace("{number}", conv.number) : conv.key;
    return conv.name || conv.key;
  }

  function icon(platform, el) {
    const span = el || document.createElement("span");
    span.className = "platform platform-" + (PLATFORMS[platform] ? platform : "other");
    span.title = platformName(platform);
    span.setAttribute("role", "img");
    span.setAttribute("aria-label", platformName(platform));
    return span;
  }

  function item(conv) {
    const li = document.createElement("li");
    li.dataset.key = conv.key;
    li.dataset.platform = conv.platform;
    li.classList.toggle("selected", conv.key === selected);
    li.classList.toggle("cursor", conv.key === cursor);
    const top = document.createElement("span");
    top.className = "top";
    const who = document.createElement("span");
    who.className = "name";
    who.textContent = displayName(conv);
    top.append(icon(conv.platform), who);
    if (conv.waiting_since) {
      const waited = document.createElement("span");
      waited.className = "waited";
      waited.dataset.since = conv.waiting_since;
      top.append(waited);
    }
    li.append(top);
    const preview = document.createElement("span");
    preview.className = "preview";
    preview.textContent = conv.last_text;
    const details = document.createElement("span");
    details.className = "details";
    details.textContent = conv.key;
    li.append(preview, details);
    li.addEventListener("click", () => { cursor = conv.key; open(conv.key).catch(() => {}); });
    return li;
  }

  function sections(inProgress) {
    // one section per person, the signed-in operator's first
    const groups = new Map();
    for (const c of inProgress) {
      if (!groups.has(c.operator)) groups.set(c.operator, []);
      groups.get(c.operator).push(c);
    }
    const order = [...groups.keys()].sort((a, b) => (b === name) - (a === name));
    return order.flatMap((who) => {
      const h = document.createElement("h2");
      h.className = "progress";
      h.textContent = t("in_progress").replace("{name}", who);
      const ul = document.createElement("ul");
      ul.className = "progress";
      ul.replaceChildren(...groups.get(who).map(item));
      return [h, ul];
    });
  }

  function tick() {
    const now = Date.now() / 1000 + skew;
    document.querySelectorAll(".waited").forEach((el) => {
      el.textContent = t("waited").replace("{time}", duration(Math.max(0, now - Number(el.dataset.since))));
    });
  }

  async function loadList() {
    const data = await api("/api/operator/conversations");
    skew = data.now - Date.now() / 1000;
    $("waiting").replaceChildren(...data.waiting.map(item));
    $("inprogress").replaceChildren(...sections(data.in_progress || []));
    $("active").replaceChildren(...data.active.map(item));
    $("nonewaiting").hidden = data.waiting.length > 0;
    tick();
  }

  function bubble(m) {
    const div = document.createElement("div");
    const person = m.role === "assistant" && m.author;
    div.className = "msg " + (person ? "person" : m.role) + (m.state === "held" ? " held" : "") +
      (m.undelivered ? " undelivered" : "");
    if (person) {
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = m.author;
      div.append(who);
    }
    if (m.undelivered) {
      const flag = document.createElement("span");
      flag.className = "undelivered-flag";
      flag.textContent = t("not_delivered");
      div.append(flag);
    }
    div.append(document.createTextNode(m.text));
    const images = (m.files || []).filter((f) => f.sha256 && (f.mime || "").startsWith("image/"));
    if (images.length) {
      const thumbs = document.createElement("div");
      thumbs.className = "thumbs";
      for (const f of images) {
        const img = document.createElement("img");
        img.alt = f.name;
        img.loading = "lazy";
        img.src = "/api/operator/files/" + f.sha256 + "?ticket=" + encodeURIComponent(ticket);
        // an image that arrives after the scroll makes the log taller: the newest message stays in view
        img.addEventListener("load", () => { if (stick) toBottom(); });
        img.addEventListener("error", () => {
          const label = document.createElement("span");
          label.className = "file";
          label.textContent = f.name;
          img.replaceWith(label);
        });
        thumbs.append(img);
      }
      div.append(thumbs);
    }
    for (const f of (m.files || []).filter((f) => !images.includes(f))) {
      const label = document.createElement("span");
      label.className = "file";
      label.textContent = f.name;
      div.append(label);
    }
    return div;
  }

  const log = $("log");
  const toBottom = () => { log.scrollTop = log.scrollHeight; };
  for (const type of ["wheel", "touchmove", "pointerdown", "keydown"]) {
    log.addEventListener(type, () => { touchedAt = Date.now(); }, { passive: true });
  }
  // only the operator's own scrolling lets go of the bottom (not the log growing under an image)
  log.addEventListener("scroll", () => {
    if (Date.now() - touchedAt < 1500) stick = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  });
  new ResizeObserver(() => { if (stick) toBottom(); }).observe(log);

  function markCursor() {
    document.querySelectorAll("nav li").forEach((li) => {
      li.classList.toggle("selected", li.dataset.key === selected);
      li.classList.toggle("cursor", li.dataset.key === cursor);
    });
  }

  async function open(key) {
    selected = key;
    markCursor();
    const data = await api("/api/operator/conversations/" + encodeURIComponent(key) + "/messages");
    if (selected !== key) return;
    $("pick").hidden = true;
    $("head").hidden = false;
    icon(data.platform, $("icon"));
    $("title").textContent = displayName(data);
    $("details").hidden = false;
    $("details").textContent = data.key;
    $("mode").textContent = data.mode === "human" ? t("with_person") : t("with_bot");
    $("mode").className = "badge " + data.mode;
    // a platform this process does not serve: nothing sent from here could reach the user
    const readOnly = !data.served;
    $("readonly").hidden = !readOnly;
    $("readonly").textContent = readOnly ? t("read_only").replace("{platform}", platformName(data.platform)) : "";
    $("take").disabled = readOnly || data.mode === "human";
    $("giveback").disabled = readOnly || data.mode !== "human";
    $("replyform").hidden = readOnly || data.mode !== "human";
    const again = key === shown;
    const kept = log.scrollTop;
    log.replaceChildren(...data.messages.map(bubble));
    shown = key;
    if (!again) stick = true;
    if (stick) toBottom(); else log.scrollTop = kept; // reading further up: a live update does not pull down
    document.body.dataset.opened = key;
  }

  async function newTicket() {
    ticket = (await api("/api/operator/tickets", { method: "POST" })).ticket;
  }

  async function listen() {
    if (events) events.close();
    await newTicket();
    events = new EventSource("/api/operator/events?ticket=" + encodeURIComponent(ticket));
    events.onmessage = (e) => {
      const event = JSON.parse(e.data);
      loadList().catch(() => {});
      if (event.conversation === selected) open(selected).catch(() => {});
    };
    events.onerror = () => {
      events.close();
      events = null;
      setTimeout(() => { if (token) listen().catch(() => {}); }, 2000);
    };
  }

  // -- the Quality tab: answers rated 👎 and corrected drafts, feedback per day -------------------------------
  const SERIES = [["up", "q_up"], ["down", "q_down"], ["corrected", "q_corrected"],
    ["handoff_after_answer", "q_handoff"]];
  const KINDS = { down: "q_down", edited: "q_edited", discarded: "q_discarded" };
  const SVG = "http://www.w3.org/2000/svg";
  let qualityLoaded = false;

  function svg(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  function qualityQuery(dates) {
    const q = new URLSearchParams();
    const persona = $("qpersona").value.trim();
    if (persona) q.set("persona", persona);
    if ($("qplatform").value) q.set("platform", $("qplatform").value);
    if (dates) {
      if ($("qsince").value) q.set("since", $("qsince").value);
      if ($("quntil").value) q.set("until", $("quntil").value);
    }
    return q.toString();
  }

  function chart(data) {
    // a group of bars per day, one bar per series, scaled to the busiest day; no bar for a zero
    const days = data.days;
    const w = 24, gap = 4, h = 100, bar = (w - gap) / SERIES.length;
    const top = Math.max(1, ...days.flatMap((d) => SERIES.map(([s]) => d[s])));
    const box = svg("svg", { viewBox: `0 0 ${days.length * w} ${h}`, preserveAspectRatio: "none", role: "img",
      "aria-label": t("q_chart") });
    days.forEach((d, i) => {
      SERIES.forEach(([series, label], j) => {
        if (!d[series]) return;
        const height = Math.max(2, (d[series] / top) * (h - 4));
        const rect = svg("rect", { x: i * w + gap / 2 + j * bar, y: h - height, width: bar, height,
          class: "bar bar-" + series, "data-day": d.day, "data-series": series, "data-count": d[series] });
        const title = svg("title", {});
        title.textContent = `${d.day} · ${t(label)}: ${d[series]}`;
        rect.append(title);
        box.append(rect);
      });
    });
    $("qchart").replaceChildren(box);
    $("qlegend").replaceChildren(...SERIES.map(([series, label]) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch bar-" + series;
      const total = days.reduce((sum, d) => sum + d[series], 0);
      li.append(swatch, document.createTextNode(`${t(label)} ${new Intl.NumberFormat(lang).format(total)}`));
      return li;
    }));
  }

  function note(label, text, cls) {
    const p = document.createElement("p");
    p.className = "qnote " + cls;
    const strong = document.createElement("strong");
    strong.textContent = t(label);
    p.append(strong, document.createTextNode(text));
    return p;
  }

  function qualityItem(it) {
    const li = document.createElement("li");
    li.className = "qitem kind-" + it.kind;
    li.dataset.kind = it.kind;
    li.dataset.id = String(it.id);
    const head = document.createElement("div");
    head.className = "qhead";
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = t(KINDS[it.kind] || it.kind);
    const when = document.createElement("time");
    when.dateTime = new Date(it.at * 1000).toISOString();
    when.textContent = new Date(it.at * 1000).toLocaleString(lang);
    const details = document.createElement("span");
    details.className = "details";
    details.textContent = [it.persona, it.model, it.conversation].filter(Boolean).join(" · ");
    head.append(icon(it.platform), badge, when, details);
    li.append(head);
    if (it.earlier.length) {
      // the turns before the question, folded: the question and the answer are what was rated
      const earlier = document.createElement("details");
      earlier.className = "earlier";
      const summary = document.createElement("summary");
      summary.textContent = t("q_earlier").replace("{number}", it.earlier.length);
      earlier.append(summary, ...it.earlier.map(bubble));
      li.append(earlier);
    }
    if (it.question) li.append(bubble(it.question));
    li.append(bubble(it.answer));
    if (it.comment) li.append(note("q_comment", it.comment, "comment"));
    if (it.value && it.kind !== "down") li.append(note("q_sent_instead", it.value, "sent"));
    return li;
  }

  async function loadQuality() {
    const [items, daily] = await Promise.all([
      api("/api/operator/quality/items?" + qualityQuery(true)),
      api("/api/operator/quality/daily?" + qualityQuery(false)),
    ]);
    chart(daily);
    $("qitems").replaceChildren(...items.items.map(qualityItem));
    $("qnone").hidden = items.items.length > 0;
    // the personas seen so far are offered in the persona filter
    const known = new Set([...$("qpersonas").options].map((o) => o.value));
    for (const it of items.items) {
      if (it.persona && !known.has(it.persona)) {
        known.add(it.persona);
        const option = document.createElement("option");
        option.value = it.persona;
        $("qpersonas").append(option);
      }
    }
    qualityLoaded = true;
    document.body.dataset.quality = qualityQuery(true) || "all";
  }

  function route() {
    // #quality shows the Quality tab; anything else the inbox
    const quality = location.hash === "#quality";
    $("inbox").hidden = quality;
    $("qualityview").hidden = !quality;
    $("tab-inbox").classList.toggle("current", !quality);
    $("tab-quality").classList.toggle("current", quality);
    // loaded once the ticket its images need is there (start routes again then)
    if (quality && !qualityLoaded && ticket) loadQuality().catch(() => {});
  }

  for (const p of Object.keys(PLATFORMS)) {
    const option = document.createElement("option");
    option.value = p;
    option.textContent = platformName(p);
    $("qplatform").append(option);
  }
  $("qfilters").addEventListener("submit", (e) => {
    e.preventDefault();
    loadQuality().catch(() => {});
  });
  window.addEventListener("hashchange", () => { if (token) route(); });

  async function start() {
    $("login").hidden = true;
    $("tabs").hidden = false;
    route();
    $("me").hidden = false;
    $("me").textContent = name;
    $("signout").hidden = false;
    await loadList();
    await listen();
    route();
    document.body.dataset.ready = "1";
    clearInterval(listTimer);
    listTimer = setInterval(() => { loadList().catch(() => {}); }, 10000);
    setInterval(tick, 1000);
    setInterval(() => { newTicket().catch(() => {}); }, 300000);
  }

  function signOut(failed) {
    token = "";
    sessionStorage.removeItem("operator-token");
    if (events) events.close();
    clearInterval(listTimer);
    $("inbox").hidden = true;
    $("qualityview").hidden = true;
    $("tabs").hidden = true;
    qualityLoaded = false;
    $("me").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("loginerror").hidden = !failed;
  }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    name = $("name").value.trim();
    sessionStorage.setItem("operator-token", token);
    sessionStorage.setItem("operator-name", name);
    start().catch(() => {});
  });
  $("signout").addEventListener("click", () => signOut(false));
  $("replyform").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("reply").value.trim();
    if (!text || !selected) return;
    $("send").disabled = true;
    try {
      await api("/api/operator/conversations/" + encodeURIComponent(selected) + "/reply",
        { method: "POST", body: JSON.stringify({ text, author: name }) });
      $("reply").value = "";
      await open(selected);
    } finally {
      $("send").disabled = false;
    }
  });
  // Enter is a new line (answers have several); Ctrl+Enter (⌘+Enter) sends
  $("reply").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("replyform").requestSubmit(); }
  });
  document.addEventListener("keydown", (e) => {
    if ($("inbox").hidden || e.altKey) return;
    const typing = e.target.closest && e.target.closest("input, textarea, select");
    if (typing) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      const list = [...document.querySelectorAll("nav li")];
      if (!list.length) return;
      e.preventDefault();
      const at = list.findIndex((li) => li.dataset.key === (cursor || selected));
      const step = e.key === "ArrowDown" ? 1 : -1;
      const next = at < 0 ? (step > 0 ? 0 : list.length - 1) : Math.min(list.length - 1, Math.max(0, at + step));
      cursor = list[next].dataset.key;
      markCursor();
      list[next].scrollIntoView({ block: "nearest" });
    } else if (e.key === "Enter" && cursor && !e.ctrlKey && !e.metaKey && !e.target.closest("button")) {
      e.preventDefault();
      open(cursor).catch(() => {});
    }
  });
  $("take").addEventListener("click", async () => {
    await api("/api/operator/conversations/" + encodeURIComponent(selected) + "/take",
      { method: "POST", body: JSON.stringify({ by: name }) });
    await open(selected);
    await loadList();
  });
  $("giveback").addEventListener("click", async () => {
    await api("/api/operator/conversations/" + encodeURIComponent(selected) + "/return",
      { method: "POST", body: JSON.stringify({ by: name }) });
    await open(selected);
    await loadList();
  });

  if (token && name) start().catch(() => {}); else $("login").hidden = false;
})();
