"use strict";
// The operator inbox: conversations waiting for a person, live (server-sent events), a transcript with images,
// and a reply box that delivers into the user's platform. The token stays in this tab (sessionStorage).
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
  let waiting = [];
  let skew = 0; // server clock minus ours

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

  function item(conv, isWaiting) {
    const li = document.createElement("li");
    li.dataset.key = conv.key;
    if (conv.key === selected) li.classList.add("selected");
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = conv.key;
    li.append(key);
    if (isWaiting && conv.handoff_at) {
      const waited = document.createElement("span");
      waited.className = "waited";
      waited.dataset.since = conv.handoff_at;
      li.append(waited);
    }
    const preview = document.createElement("span");
    preview.className = "preview";
    preview.textContent = conv.last_text;
    li.append(preview);
    li.addEventListener("click", () => open(conv.key));
    return li;
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
    waiting = data.waiting;
    $("waiting").replaceChildren(...data.waiting.map((c) => item(c, true)));
    $("active").replaceChildren(...data.active.map((c) => item(c, false)));
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

  async function open(key) {
    selected = key;
    document.querySelectorAll("nav li").forEach((li) => li.classList.toggle("selected", li.dataset.key === key));
    const data = await api("/api/operator/conversations/" + encodeURIComponent(key) + "/messages");
    if (selected !== key) return;
    $("pick").hidden = true;
    $("head").hidden = false;
    $("title").textContent = key;
    $("mode").textContent = data.mode === "human" ? t("with_person") : t("with_bot");
    $("mode").className = "badge " + data.mode;
    $("take").disabled = data.mode === "human";
    $("giveback").disabled = data.mode !== "human";
    $("replyform").hidden = data.mode !== "human";
    const log = $("log");
    log.replaceChildren(...data.messages.map(bubble));
    log.scrollTop = log.scrollHeight;
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

  async function start() {
    $("login").hidden = true;
    $("inbox").hidden = false;
    $("me").hidden = false;
    $("me").textContent = name;
    $("signout").hidden = false;
    await loadList();
    await listen();
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
  $("reply").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("replyform").requestSubmit(); }
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
